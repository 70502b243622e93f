"""Helpers for the real-browser tests: a real ComfyUI server (main.py --cpu) and a headless Chromium page
driving a ComfyUI frontend through Playwright.

Chromium is Debian's package (/usr/bin/chromium, or $GS_CHROMIUM); ``make test`` installs it
(scripts/setup.sh). Playwright's own browser download (``playwright install``) is never used.

Two frontends are tested (``FRONTENDS``): the host's pinned comfyui-frontend-package (what ComfyUI 0.3.75's
requirements install) and a newer release that ``make test`` installs into ``.venv/frontends/<version>/``
(scripts/setup.sh), served with the host's ``--front-end-root`` flag.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from devkit import harness

ARTIFACTS = harness.ROOT / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("GS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1500, "height": 1000}
# First-run UI that would cover the graph (template browser, tutorial) is switched off per user, and so is the
# pinned frontend's "missing models" dialog: the templates declare their model files (properties.models), the
# test host has none of them (tiny models are swapped in), and the dialog would cover the graph and try to fetch
# each file's size from the internet. test_browser_workflows.py turns it back on to check what it lists.
MISSING_MODELS_SETTING = "Comfy.Workflow.ShowMissingModelsWarning"
USER_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Validation.Workflows": True, MISSING_MODELS_SETTING: False}

# Frontend versions the browser tests run on: the host's pinned one (served by default) and the newer release
# scripts/setup.sh installs with WITH_TEST_DEPS=1 (keep NEWER_FRONTEND in step with FRONTEND_PIN there).
PINNED_FRONTEND = "1.32.9"
NEWER_FRONTEND = "1.58.1"
FRONTENDS = (PINNED_FRONTEND, NEWER_FRONTEND)
# "Nodes 2.0" (the setting "Modern Node Design (Nodes 2.0)", experimental in both frontends): nodes drawn as Vue
# components (DOM) instead of on the LiteGraph canvas; DOM widgets are moved into the Vue node. Tested on the newer
# frontend only: 1.32.9's early version of the mode does not set node.imgs on output nodes (run_graph waits for
# them), logs a TypeError of its own when Load Image names a missing file, and sizes a DOM widget by its content
# (the widgets there are not yet adapted to that: see docs/frontend.md).
NODE_MODES = ("classic", "vue")
VUE_NODES_SETTING = "Comfy.VueNodes.Enabled"
VUE_NODES_FRONTENDS = (NEWER_FRONTEND,)


def frontend_root(version: str) -> Path | None:
    """The --front-end-root folder for a frontend version; None for the host's pinned package (its default)."""
    if version == PINNED_FRONTEND:
        return None
    return harness.ROOT / ".venv" / "frontends" / version / "comfyui_frontend_package" / "static"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def store_setting(server: "Server", setting: str, value) -> None:
    """Store a setting for the server's user (POST /settings/<id>, as the settings dialog does); a page opened
    afterwards reads it when it starts."""
    request = urllib.request.Request(f"{server.url}/settings/{setting}", method="POST",
                                     data=json.dumps(value).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, response.status


def set_node_mode(server: "Server", mode: str) -> None:
    """Store the Nodes 2.0 setting for the server's user (POST /settings/<id>, as the settings dialog does),
    before a page is opened: the frontend reads it when it starts."""
    if mode not in NODE_MODES:
        raise ValueError(f"mode must be one of {NODE_MODES}, got {mode!r}")
    if server.frontend not in VUE_NODES_FRONTENDS:
        if mode == "vue":
            raise ValueError(f"frontend {server.frontend} has no Nodes 2.0 mode")
        return
    store_setting(server, VUE_NODES_SETTING, mode == "vue")


def empty_cache(server: "Server") -> None:
    """Empty the server's cache of node outputs (POST /free with free_memory, as the frontend's "Unload models
    and execution cache" command does). A node whose output comes from the cache sends no UI output (ComfyUI
    only visits output nodes then), so a test that runs the same prompt as an earlier test on this server (the
    same test in the other node mode) would otherwise see no background, palette or viewer from its run. The
    server's worker resets the cache when it wakes for the flag; nothing reports it, hence the short pause."""
    request = urllib.request.Request(f"{server.url}/free", method="POST",
                                     data=json.dumps({"free_memory": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, response.status
    time.sleep(1.5)


def node_mode(page: "Page") -> str:
    """The mode the page runs in: "vue" when the frontend has Nodes 2.0 on, else "classic"."""
    on = page.page.evaluate("(id) => { const s = window.app.extensionManager && window.app.extensionManager.setting;"
                            " return !!(s && s.get(id)); }", VUE_NODES_SETTING)
    return "vue" if on else "classic"


class Server:
    """``main.py --cpu`` on a free loopback port, with its own input/output/user folders."""

    def __init__(self, base: Path, with_pack: bool = True, frontend: str = PINNED_FRONTEND):
        self.base = base
        self.with_pack = with_pack
        self.frontend = frontend
        for sub in ("output", "input", "user/default", "temp"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(USER_SETTINGS))
        # input/ starts empty: the pack copies the example paintings into it when it loads, as on a fresh install.
        args = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(free_port()),
                "--output-directory", str(base / "output"), "--input-directory", str(base / "input"),
                "--user-directory", str(base / "user"), "--temp-directory", str(base / "temp"),
                "--disable-auto-launch"]
        if with_pack:
            custom_nodes = harness.make_custom_nodes_dir(base)
            (base / "extra_model_paths.yaml").write_text(
                "gs_tests:\n"
                f"  base_path: {base}\n"
                f"  custom_nodes: |\n    {custom_nodes}\n    {harness.HOST_NODES}\n" + harness.server_model_paths(base))
            args += ["--extra-model-paths-config", str(base / "extra_model_paths.yaml")]
        else:
            args += ["--disable-all-custom-nodes"]
        root = frontend_root(frontend)
        if root is not None:
            if not (root / "index.html").is_file():
                raise FileNotFoundError(f"frontend {frontend} is missing at {root}: run `make setup-test` "
                                        "(scripts/setup.sh installs it with WITH_TEST_DEPS=1)")
            args += ["--front-end-root", str(root)]
        self.port = int(args[args.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(args, cwd=str(harness.host_path()), stdout=self._log,
                                        stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_ready(self) -> "Server":
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                http_json(self.url + "/system_stats", timeout=2)
                return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("ComfyUI did not start:\n" + self.log_path.read_text()[-4000:])

    @property
    def input_dir(self) -> Path:
        return self.base / "input"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def new_server(with_pack: bool = True, frontend: str = PINNED_FRONTEND) -> Server:
    """Start a server (returns at once; call wait_ready before use)."""
    return Server(Path(tempfile.mkdtemp(prefix="gs-browser-")), with_pack=with_pack, frontend=frontend)


# -------------------------------------------------------------------------------------------------
# Browser side

# Console noise is compared after dropping what differs between two servers (port, ids, counters).
_VOLATILE = [(re.compile(r"https?://127\.0\.0\.1:\d+"), "URL"), (re.compile(r"\b[0-9a-f]{8}-[0-9a-f-]{27}\b"), "UUID"),
             (re.compile(r"\d+(\.\d+)?\s*ms\b"), "N ms")]


def normalise(message: str) -> str:
    for pattern, replacement in _VOLATILE:
        message = pattern.sub(replacement, message)
    return message.strip()


# Errors of a newer frontend asking the 0.3.75 host for routes it does not serve, logged again at every
# queue/history refresh (so a page load alone does not show them all): the Jobs API (/api/jobs, added to
# ComfyUI after 0.3.75; frontend 1.58.1 polls it for the queue and history panels). They come from the
# frontend/host pair, never from the pack; every other error still has to be in the baseline.
HOST_GAPS = re.compile(r"/api/jobs\?|JobsApiError")
# The stock frontend (1.58.1) stores a changed setting with POST /api/settings/<id> and never reads the reply,
# which Chromium then reports as an aborted request (seen without the pack too, for any setting the page changes).
FRONTEND_NOISE = re.compile(r"^requestfailed: \S+/api/settings/[\w.%]+ net::ERR_ABORTED$")

_EXTERNAL = re.compile(r"^(?!https?://127\.0\.0\.1[:/])(?!data:)(?!blob:)(?!about:)")


def _is_local(url: str) -> bool:
    return not url or url.startswith(("http://127.0.0.1", "data:", "blob:", "about:"))


class Page:
    """One Playwright page on a server, recording console errors, page errors and failed requests."""

    def __init__(self, browser, server: Server):
        self.server = server
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.warnings: list[str] = []  # console warnings (not failures by themselves)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("requestfailed", lambda r: _is_local(r.url) and self.errors.append(
            f"requestfailed: {r.url} {r.failure}"))
        # Nothing outside this machine is contacted: the frontend's own look-ups (api.comfy.org release
        # notes, registry info per node type) are aborted, and their failures are not counted as errors.
        self.context.route(_EXTERNAL, lambda route: route.abort())
        self.page.set_default_timeout(60_000)
        self.mode = "classic"

    def _console(self, message) -> None:
        if message.type == "warning":
            self.warnings.append(message.text)
        if message.type != "error":
            return
        where = (message.location or {}).get("url", "")
        if where and not _is_local(where):
            return
        self.errors.append(f"console: {message.text} [{where}]")

    def open(self) -> None:
        self.page.goto(self.server.url + "/", wait_until="load")
        self.wait_ready()
        served = self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
        assert served == self.server.frontend, f"asked for frontend {self.server.frontend}, the page runs {served}"
        self.mode = node_mode(self)

    def reload(self) -> None:
        self.page.reload(wait_until="load")
        self.wait_ready()

    def wait_ready(self) -> None:
        # window.app / window.LiteGraph appear when the graph view is set up; node defs are registered then.
        self.wait("() => window.app && window.app.graph && window.LiteGraph"
                  " && Object.keys(window.LiteGraph.registered_node_types).length > 100"
                  " && window.app.canvas && window.app.canvasEl", timeout=90_000)
        self.page.evaluate(_INSTALL_RECORDER)
        self.page.wait_for_load_state("networkidle")

    def wait(self, predicate: str, arg=None, timeout: float = 60_000):
        """page.wait_for_function, polled every 200 ms (the default polls every animation frame, which
        costs CPU the server needs); returns the predicate's truthy value."""
        return self.page.wait_for_function(predicate, arg=arg, polling=200, timeout=timeout).json_value()

    def run_graph(self, output_ids: list[str], timeout: float = 900_000) -> dict:
        """Queue the current graph as the Run button does and wait until the output nodes show their
        images. The graph canvas stops redrawing while the server works (software rendering in headless
        Chromium would take CPU from it) and redraws before the images are checked."""
        queued = self.page.evaluate(QUEUE)
        answer = queued["answer"] or {}
        if not answer.get("prompt_id") or answer.get("node_errors") or answer.get("error"):
            return {"error": {"not_queued": answer}}
        self.page.evaluate("() => { window.app.canvas.pause_rendering = true; }")
        try:
            marks = {"ids": output_ids, "since": queued["before"], "errorsSince": queued["errorsBefore"]}
            finished = self.wait(WAIT_EXECUTED, marks, timeout)
        finally:
            self.page.evaluate("() => { window.app.canvas.pause_rendering = false;"
                               " window.app.canvas.setDirty(true, true); }")
        if "error" in finished:
            return finished
        result = self.wait(WAIT_OUTPUT_IMAGES, marks)
        result["prompt_id"] = answer["prompt_id"]
        return result

    def new_errors(self, baseline: set[str], since: int = 0) -> list[str]:
        """Errors recorded (after the first ``since``) that a page without the pack does not log (and that
        are not HOST_GAPS or FRONTEND_NOISE)."""
        return [e for e in self.errors[since:] if normalise(e) not in baseline and not HOST_GAPS.search(e)
                and not FRONTEND_NOISE.match(e)]

    def screenshot(self, name: str) -> Path:
        """test-artifacts/browser/<frontend version>[-nodes-2.0]/<name>.png"""
        folder = self.artifacts
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    @property
    def artifacts(self) -> Path:
        """test-artifacts/browser/<frontend version>, with "-nodes-2.0" when the page runs Nodes 2.0."""
        return ARTIFACTS / (self.server.frontend + ("-nodes-2.0" if self.mode == "vue" else ""))

    def close(self) -> None:
        self.context.close()


def show_node(page: Page, node_type: str, left: float = 120, top: float = 150) -> None:
    """Scroll the graph so the first node of ``node_type`` sits at (left, top) of the view, at 100 % zoom."""
    page.page.evaluate("""([type, left, top]) => {
      const node = window.app.graph.nodes.find((n) => n.type === type);
      const ds = window.app.canvas.ds;
      ds.scale = 1;
      ds.offset = [-node.pos[0] + left, -node.pos[1] + top];
      window.app.canvas.setDirty(true, true);
    }""", [node_type, left, top])


def show_stroke_canvas(page: Page) -> dict:
    """Put the first Stroke Canvas node at the top left of the view at 100 %, and return its drawing surface's
    box once the widget is laid out there (the DOM follows the graph canvas on its next frames)."""
    show_node(page, "GS_StrokeCanvas")
    surface = page.page.locator(".gs-stroke-canvas-surface")
    surface.wait_for(state="visible")
    page.wait(
        "() => { const r = document.querySelector('.gs-stroke-canvas-surface').getBoundingClientRect();"
        " return r.width > 100 && r.left > 0 && r.top > 0; }")
    return surface.bounding_box()


def doc_screenshot(page: Page, node_type: str, name: str) -> Path:
    """A screenshot of the first ``node_type`` node (title included) to docs/images/<name>.png."""
    clip = page.page.evaluate(
        "(type) => { const n = window.app.graph.nodes.find((n) => n.type === type);"
        " const r = window.app.canvasEl.getBoundingClientRect();"
        " const [x, y] = window.app.canvas.ds.convertOffsetToCanvas([n.pos[0], n.pos[1]]);"
        " const title = window.LiteGraph.NODE_TITLE_HEIGHT;"
        " return { x: r.left + x - 8, y: r.top + y - title - 8, width: n.size[0] + 16,"
        " height: n.size[1] + title + 16 }; }", node_type)
    path = harness.ROOT / "docs" / "images" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.page.screenshot(path=str(path), clip=clip)
    return path


# Records the server's execution messages as the frontend's api object receives them.
_INSTALL_RECORDER = """() => {
  if (window.__gs) return;
  const api = window.comfyAPI.api.api;
  window.__gs = { executed: [], errors: [], success: [], queued: [] };
  const queuePrompt = api.queuePrompt.bind(api);
  api.queuePrompt = async (...args) => {
    try {
      const answer = await queuePrompt(...args);
      window.__gs.queued.push(answer);
      return answer;
    } catch (error) {
      window.__gs.queued.push({ error: String(error && error.message), response: error && error.response });
      throw error;
    }
  };
  api.addEventListener('executed', (e) => window.__gs.executed.push(e.detail));
  api.addEventListener('execution_error', (e) => window.__gs.errors.push(e.detail));
  api.addEventListener('execution_success', (e) => window.__gs.success.push(e.detail));
}"""


# -------------------------------------------------------------------------------------------------
# Graph operations run in the page (the frontend's own objects: window.app, window.LiteGraph)

# Test-only swaps, mirroring harness.TINY_SWAPS: the example workflows name a real checkpoint
# ("v1-5-pruned-emaonly.safetensors", absent here) and 512 px inputs. In the browser graph each swapped
# node is replaced by the test node (devkit/host_nodes), widget values are copied by name where the test
# node has the same widget, and every link is reconnected (inputs by name, outputs by slot).
BROWSER_SWAPS = {
    # by the checkpoint's file name (harness.FLOW_CHECKPOINTS): a flow template gets the tiny flow model
    "CheckpointLoaderSimple": {"type": "GS_TestTinyCheckpoint", "values": {"kind": "sd15", "seed": 0},
                               "cases": {"widget": "ckpt_name", "values": {
                                   name: {"type": "GS_TestTinyFlowCheckpoint", "values": {"kind": kind, "seed": 0}}
                                   for name, kind in harness.FLOW_CHECKPOINTS.items()}}},
    "LoadImage": {"type": "GS_TestLoadImageSmall", "values": {"size": 64}},
    "GS_StrokeCanvas": {"type": "GS_TestStrokeCanvasSmall", "values": {"size": 64}},
    "EmptyLatentImage": {"type": "EmptyLatentImage", "values": {"width": 64, "height": 64}},
    "EmptySD3LatentImage": {"type": "EmptySD3LatentImage", "values": {"width": 64, "height": 64}},
    "GS_GradOPPlus": {"type": "GS_GradOPPlus", "values": {"width": 0, "height": 0}},
    "GS_OpenCLIPLoader": {"type": "GS_TestTinyOpenCLIP", "values": {"kind": "vit", "seed": 0}},
    "GS_SyncDiffusion": {"type": "GS_SyncDiffusion", "values": {"width": 128, "height": 32, "window_size": 32,
                                                               "stride": 16, "steps": 3, "sync_steps": 2}},
    "GS_SyncDiffusionSampler": {"type": "GS_SyncDiffusionSampler", "values": {"window_size": 32, "stride": 32,
                                                                             "sync_steps": 2}},
    "GS_SeamlessDecode": {"type": "GS_SeamlessDecode", "values": {"tile_size": 64, "overlap": 16}},
}
assert set(BROWSER_SWAPS) == set(harness.TINY_SWAPS), "keep the browser swaps in step with harness.TINY_SWAPS"

SWAP_NODES = """({swaps}) => {
  const app = window.app, LG = window.LiteGraph, graph = app.graph;
  const link = (id) => (graph.links.get ? graph.links.get(id) : graph.links[id]);
  const swapped = [];
  for (const old of [...graph.nodes]) {
    let swap = swaps[old.type];
    if (!swap) continue;
    if (swap.cases) {  // a stand-in chosen by a widget's value (the checkpoint's file name)
      const widget = (old.widgets || []).find((o) => o.name === swap.cases.widget);
      swap = (widget && swap.cases.values[widget.value]) || swap;
    }
    const node = LG.createNode(swap.type);
    if (!node) throw new Error(`cannot create ${swap.type}`);
    node.pos = [old.pos[0], old.pos[1]];
    graph.add(node);
    for (const w of node.widgets || []) {
      const same = (old.widgets || []).find((o) => o.name === w.name);
      if (same !== undefined && !(w.name in swap.values)) w.value = same.value;
      if (w.name in swap.values) w.value = swap.values[w.name];
    }
    const inbound = (old.inputs || []).filter((i) => i.link != null).map((i) => [i.name, link(i.link)]);
    const outbound = [];
    (old.outputs || []).forEach((output, slot) => {
      for (const id of output.links || []) outbound.push([slot, link(id)]);
    });
    for (const [name, l] of inbound) {
      const source = graph.getNodeById(l.origin_id);
      source.connect(l.origin_slot, node, node.findInputSlot(name));
    }
    for (const [slot, l] of outbound) {
      node.connect(slot, graph.getNodeById(l.target_id), l.target_slot);
    }
    graph.remove(old);
    swapped.push([old.type, swap.type, node.id]);
  }
  app.canvas.setDirty(true, true);
  return swapped;
}"""

# Queue the graph as the Run button does (app.queuePrompt). Its return value cannot be used (this
# frontend returns false when the server answers node_errors: {}), so the recorder keeps the server's answer.
QUEUE = """async () => {
  const before = window.__gs.executed.length, asked = window.__gs.queued.length;
  const errorsBefore = window.__gs.errors.length;
  await window.app.queuePrompt(0, 1);
  const answer = window.__gs.queued[asked];
  return { before, errorsBefore, answer: answer || null };
}"""

WAIT_EXECUTED = """({ids, since, errorsSince}) => {
  const errors = window.__gs.errors.slice(errorsSince);
  if (errors.length) return { error: errors[0] };
  const done = window.__gs.executed.slice(since).filter((d) => ids.includes(String(d.display_node || d.node)));
  return done.length >= ids.length ? { done: done.length } : null;
}"""

WAIT_OUTPUT_IMAGES = """({ids, since, errorsSince}) => {
  const errors = window.__gs.errors.slice(errorsSince);
  if (errors.length) return { error: errors[0] };
  const done = window.__gs.executed.slice(since).filter((d) => ids.includes(String(d.display_node || d.node)));
  if (done.length < ids.length) return null;
  // and the images are shown on the nodes, loaded
  for (const id of ids) {
    const node = window.app.graph.getNodeById(Number(id));
    const imgs = node && node.imgs;
    if (!imgs || !imgs.length || !imgs.every((i) => i.complete && i.naturalWidth > 0)) return null;
  }
  return { outputs: done.map((d) => ({ node: String(d.display_node || d.node), images: d.output.images || [] })) };
}"""
