"""A real ComfyUI server (``main.py --cpu``) for end-to-end tests: start, talk to it, stop."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from devkit import harness


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, payload: dict | None = None, timeout: float = 30):
    """GET (or POST ``payload`` as JSON, NaN allowed as the frontend's JSON allows it) and decode the answer.
    An HTTP error's JSON body is returned with its status under ``"http_status"``."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = json.loads(error.read() or b"{}")
        return {**body, "http_status": error.code}


@contextlib.contextmanager
def running_server(base: Path, extra_paths: str = "", model_files: bool = True) -> Iterator[dict]:
    """Start main.py with its own input/output/user/temp folders under ``base``, the pack and the test nodes as
    custom nodes, and ``extra_paths`` (YAML lines under the same entry, e.g. ``  vae_approx: models/vae_approx``).
    ``input/`` holds only what the test put there, as on a fresh install (the pack adds its example paintings).
    ``model_files``: also the model files the example workflows need (harness.server_model_paths)."""
    custom_nodes = harness.make_custom_nodes_dir(base)
    if model_files:
        extra_paths += harness.server_model_paths(base)
    (base / "extra_model_paths.yaml").write_text(
        "gs_tests:\n"
        f"  base_path: {base}\n"
        f"  custom_nodes: |\n    {custom_nodes}\n    {harness.HOST_NODES}\n" + extra_paths)
    for sub in ("output", "input", "user", "temp"):
        (base / sub).mkdir(exist_ok=True)
    port = free_port()
    log_path = base / "server.log"
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--output-directory", str(base / "output"), "--input-directory", str(base / "input"),
         "--user-directory", str(base / "user"), "--temp-directory", str(base / "temp"),
         "--extra-model-paths-config", str(base / "extra_model_paths.yaml"),
         "--disable-auto-launch"],
        cwd=str(harness.host_path()), stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline and process.poll() is None:
            try:
                http(url + "/system_stats", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        if process.poll() is not None or time.time() >= deadline:
            raise RuntimeError("server did not start:\n" + log_path.read_text()[-4000:])
        yield {"url": url, "base": base, "log": log_path}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def wait_for(server: dict, prompt_id: str, timeout: float = 240) -> dict:
    """The history entry of a finished prompt (success or error)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = http(f"{server['url']}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            entry = history[prompt_id]
            if entry["status"].get("status_str") in ("success", "error"):
                return entry
        time.sleep(0.3)
    raise AssertionError("prompt did not finish:\n" + server["log"].read_text()[-4000:])


def submit(server: dict, prompt: dict) -> dict:
    """POST a prompt; returns {"validation": node_errors} when the server refuses it, else the history entry."""
    response = http(server["url"] + "/prompt", {"prompt": prompt, "client_id": "gs-tests"})
    if "prompt_id" not in response:
        return {"validation": response}
    return wait_for(server, response["prompt_id"])


def execution_error(entry: dict) -> str:
    """The exception message of a prompt that failed while running ('' if it did not)."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data.get("exception_message", "")
    return ""
