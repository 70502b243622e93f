"""Shared test harness: a real ComfyUI host in-process, prompt execution, and workflow conversion.

The host is the tree ``make test`` installed (``.comfyui/``) or ``$COMFYUI_PATH``. The pack is
loaded the way ComfyUI loads any custom node: from a ``custom_nodes`` folder holding a link to
this repository, next to ``devkit/host_nodes`` (the development-only tiny-model nodes).
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST_NODES = Path(__file__).resolve().parent / "host_nodes"
WORKFLOWS = ROOT / "example_workflows"
PACK_NAME = "guided_synthesis"


def host_path() -> Path:
    stamp = ROOT / ".venv" / ".gs-setup" / "host_path"
    if os.environ.get("COMFYUI_PATH"):
        return Path(os.environ["COMFYUI_PATH"]).resolve()
    if stamp.exists():
        return Path(stamp.read_text().strip())
    return ROOT / ".comfyui"


def put_host_first() -> Path:
    """The host's modules (``nodes``, ``comfy``...) must win over this repo's ``nodes/`` package."""
    host = str(host_path())
    if host in sys.path:
        sys.path.remove(host)
    sys.path.insert(0, host)
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    return Path(host)


LPIPS_TRUNKS = {"vgg": "vgg16", "alex": "alexnet", "squeeze": "squeezenet1_1"}


def write_lpips_trunks(folder: Path, nets=("vgg", "alex", "squeeze")) -> dict:
    """Seeded random torchvision trunks ('features' state dicts) as models/lpips files; {net: path}."""
    import torch
    import torchvision
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for net in nets:
        torch.manual_seed(0)
        features = getattr(torchvision.models, LPIPS_TRUNKS[net])(weights=None).features
        state = {f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}
        paths[net] = folder / f"{LPIPS_TRUNKS[net]}_test.safetensors"
        save_file(state, str(paths[net]))
    return paths


# Writes a tiny seeded TAESD decoder (devkit/host_nodes' tiny.taesd_decoder_state_dict) in a process of its own:
# comfy is imported there as the host imports it (--cpu), which this process may not have done.
_TAESD_WRITER = """
import importlib.util, sys
target, channels = sys.argv[1], int(sys.argv[2])
sys.argv = [sys.argv[0], "--cpu"]
from devkit import harness
harness.put_host_first()
import comfy.options
comfy.options.enable_args_parsing()
import comfy.cli_args
spec = importlib.util.spec_from_file_location("gs_tiny", harness.HOST_NODES / "gs_test_nodes" / "tiny.py")
tiny = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tiny)
from safetensors.torch import save_file
save_file(tiny.taesd_decoder_state_dict(3, latent_channels=channels), target)
"""


def write_taesd_decoder(path: Path, latent_channels: int) -> None:
    import subprocess
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", _TAESD_WRITER, str(path), str(latent_channels)], cwd=str(ROOT),
                   check=True, capture_output=True)


def server_model_paths(base: Path) -> str:
    """Model files the example workflows need, written under ``base/models`` for a server started by a test: LPIPS
    trunks (random, seeded) for the panoramas and a tiny TAEF1 decoder for the Flux templates' decoder 'taesd'.
    Returns the extra_model_paths.yaml lines naming the folders."""
    write_lpips_trunks(base / "models" / "lpips", nets=("vgg",))
    write_taesd_decoder(base / "models" / "vae_approx" / "taef1_decoder.safetensors", 16)
    return "  lpips: models/lpips\n  vae_approx: models/vae_approx\n"


def make_custom_nodes_dir(base: Path) -> Path:
    folder = base / "custom_nodes"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / PACK_NAME
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    return folder


class RecordingServer:
    """The duck-typed PromptServer the executor talks to; records every message."""

    def __init__(self):
        self.client_id = "gs-tests"  # non-None: the executor then sends every message
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def send_progress_text(self, text, node_id, sid=None):
        """The text ComfyUI shows under a node (PromptServer.send_progress_text), recorded as a message."""
        self.messages.append(("progress_text", {"node": str(node_id), "text": text}))

    def queue_updated(self):
        pass


class PromptFailed(AssertionError):
    pass


class Host:
    """A ComfyUI host initialised once per test session (``--cpu``)."""

    def __init__(self, workdir: Path):
        put_host_first()
        saved_argv = sys.argv
        sys.argv = [saved_argv[0], "--cpu", "--disable-all-custom-nodes"]
        try:
            import comfy.options
            comfy.options.enable_args_parsing()
            import comfy.cli_args  # noqa: F401  (parses --cpu)
        finally:
            sys.argv = saved_argv
        import comfy.cli_args as cli_args
        cli_args.args.disable_all_custom_nodes = False
        # Import the host's ``utils`` package before nodes.py puts comfy/ (with its utils.py) first
        # on sys.path, as main.py does.
        import utils.install_util  # noqa: F401
        import folder_paths
        import nodes

        self.workdir = workdir
        custom_nodes = make_custom_nodes_dir(workdir)
        folder_paths.folder_names_and_paths["custom_nodes"] = ([str(custom_nodes), str(HOST_NODES)], set())
        folder_paths.set_output_directory(str(workdir / "output"))
        folder_paths.set_input_directory(str(workdir / "input"))
        folder_paths.set_temp_directory(str(workdir / "temp"))
        for sub in ("output", "input", "temp"):
            (workdir / sub).mkdir(exist_ok=True)
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        missing = [n for n in ("GS_SDEdit", "GS_TestTinyCheckpoint") if n not in nodes.NODE_CLASS_MAPPINGS]
        if missing:
            raise RuntimeError(f"nodes failed to load: {missing}")
        self.nodes = nodes

    def run(self, prompt: dict, expect_success: bool = True) -> tuple[dict, RecordingServer]:
        """Validate and execute an API-format prompt through the real PromptExecutor."""
        import execution

        prompt_id = str(uuid.uuid4())
        valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        ok, error, outputs, node_errors = valid[0], valid[1], valid[2], valid[3]
        server = RecordingServer()
        if not ok:
            if expect_success:
                raise PromptFailed(f"invalid prompt: {error} {json.dumps(node_errors, default=str)[:2000]}")
            return {"validation_error": error, "node_errors": node_errors}, server
        executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC,
                                            cache_args={"lru": 0, "ram": 0})
        executor.execute(prompt, prompt_id, {"client_id": server.client_id}, outputs)
        if expect_success and not executor.success:
            errors = [data for event, data in server.messages if event == "execution_error"]
            message = errors[0].get("exception_message") if errors else "unknown error"
            raise PromptFailed(f"execution failed: {message}\n{errors[0].get('traceback', '') if errors else ''}")
        result = dict(executor.history_result or {})
        result["success"] = executor.success
        if os.environ.get("GS_RECORD_NUMBERS") and executor.success:
            record_numbers(prompt, executor.caches.outputs)
        return result, server

    def node_error(self, server: RecordingServer) -> str:
        errors = [data for event, data in server.messages if event == "execution_error"]
        return errors[0]["exception_message"] if errors else ""


RECORDED: list[tuple[str, dict]] = []  # (test id, tensors of one executed prompt)
RECORDING_TEST = ""


def record_numbers(prompt: dict, outputs) -> None:
    """GS_RECORD_NUMBERS=<file>: the tensors every node of an executed prompt output (LATENT samples, IMAGE,
    MASK, SIGMAS), kept in order and written by conftest at the session's end, so that a refactor can show the
    suite's graphs give the same numbers before and after (scripts/compare_numbers.py)."""
    import torch

    record = {}
    for node_id, node in sorted(prompt.items()):
        entry = outputs.get(node_id)
        if entry is None or entry.outputs is None:
            continue
        for slot, values in enumerate(entry.outputs):
            for index, value in enumerate(values if isinstance(values, list) else [values]):
                if isinstance(value, dict) and isinstance(value.get("samples"), torch.Tensor):
                    value = value["samples"]
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    record[f"{node['class_type']}:{node_id}:{slot}:{index}"] = value.detach().float().cpu().clone()
    RECORDED.append((RECORDING_TEST, record))


def run_recording_progress(host, prompt: dict) -> list[tuple]:
    """Run ``prompt`` with a global progress-bar hook; returns every update as (node id, value, total)."""
    import comfy.utils
    events = []
    previous = comfy.utils.PROGRESS_BAR_HOOK

    def hook(value, total, preview, node_id=None):
        from comfy_execution.utils import get_executing_context
        context = get_executing_context()
        events.append((node_id or (context.node_id if context else None), value, total))

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        host.run(prompt)
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    return events


def loaded_module(suffix: str):
    """A module as the host loaded it (custom nodes are imported by file location, under mangled names)."""
    for name, module in list(sys.modules.items()):
        if name.endswith(suffix):
            return module
    raise RuntimeError(f"no loaded module ends with {suffix!r}")


def test_nodes_module():
    """The test-node package as the host loaded it (its CAPTURED store is the live one)."""
    return loaded_module("gs_test_nodes")


def executed_order(server: RecordingServer) -> list[str]:
    return [data["node"] for event, data in server.messages
            if event == "executing" and data.get("node") is not None]


# ----------------------------------------------------------------------------------------------
# UI workflow (as the frontend saves it) -> API prompt

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

# Swaps applied so example workflows run on the tiny test models.
# A swap is (new class_type, function(old inputs) -> new inputs), or a function(old inputs) -> (new class_type,
# new inputs) where the stand-in depends on the inputs; links are kept.

# checkpoint files the templates load -> the tiny flow family that stands in for them (any other: tiny SD1.5)
FLOW_CHECKPOINTS = {"flux1-dev-fp8.safetensors": "flux_dev"}


def _checkpoint_swap(inputs: dict) -> tuple[str, dict]:
    kind = FLOW_CHECKPOINTS.get(inputs.get("ckpt_name"))
    if kind:  # MODEL, CLIP, VAE in Load Checkpoint's slots
        return "GS_TestTinyFlowCheckpoint", {"kind": kind, "seed": 0}
    return "GS_TestTinyCheckpoint", {"kind": "sd15", "seed": 0}


TINY_SWAPS = {
    "CheckpointLoaderSimple": _checkpoint_swap,
    "LoadImage": ("GS_TestLoadImageSmall", lambda inputs: {"image": inputs["image"], "size": 64}),
    # the real Stroke Canvas node, its outputs downscaled to 64 px (devkit/host_nodes/gs_test_canvas)
    "GS_StrokeCanvas": ("GS_TestStrokeCanvasSmall", lambda inputs: {**inputs, "size": 64}),
    # a tiny random open_clip tower (devkit/host_nodes/gs_test_nodes/semantic_probes.py) for the real weights file
    "GS_OpenCLIPLoader": ("GS_TestTinyOpenCLIP", lambda inputs: {"kind": "vit", "seed": 0}),
    # the same node at the 64 px of the inputs above (the examples' empty latents are the paintings' 512 px)
    "EmptyLatentImage": ("EmptyLatentImage", lambda inputs: {**inputs, "width": 64, "height": 64}),
    "EmptySD3LatentImage": ("EmptySD3LatentImage", lambda inputs: {**inputs, "width": 64, "height": 64}),
    # GradOP+ at the 64-px painting's size (0: the strokes' size), as the templates at 0 already are
    "GS_GradOPPlus": ("GS_GradOPPlus", lambda inputs: {**inputs, "width": 0, "height": 0}),
    # panoramas shrunk to 128x32 px with 32-px windows and a few steps (the method and its options unchanged)
    "GS_SyncDiffusion": ("GS_SyncDiffusion", lambda inputs: {**inputs, "width": 128, "height": 32, "window_size": 32,
                                                             "stride": 16, "steps": 3, "sync_steps": 2}),
    "GS_SeamlessDecode": ("GS_SeamlessDecode", lambda inputs: {**inputs, "tile_size": 64, "overlap": 16}),
    # the SAMPLER form on the 64-px empty latent above: 32-px windows, a short sync
    "GS_SyncDiffusionSampler": ("GS_SyncDiffusionSampler", lambda inputs: {**inputs, "window_size": 32, "stride": 32,
                                                                           "sync_steps": 2}),
}


def fewer_steps(prompt: dict, steps: int = 4, grad_steps: int = 2) -> dict:
    """The same prompt with at most ``steps`` sampling steps and ``grad_steps`` GradOP+ Adam steps per node, for
    tests whose subject is not the sampling (serving, loading, queueing); the graph is unchanged."""
    for node in prompt.values():
        inputs = node["inputs"]
        for name, limit in (("steps", steps), ("grad_steps", grad_steps)):
            if isinstance(inputs.get(name), int):
                inputs[name] = min(inputs[name], limit)
    return prompt


def _widget_inputs(node_class) -> list[tuple[str, dict]]:
    spec = node_class.INPUT_TYPES()
    widgets = []
    for section in ("required", "optional"):
        for name, value in spec.get(section, {}).items():
            kind, options = value[0], (value[1] if len(value) > 1 else {})
            is_widget = isinstance(kind, list) or kind in WIDGET_TYPES
            if is_widget and not options.get("forceInput"):
                widgets.append((name, options))
    return widgets


def workflow_to_prompt(workflow: dict, node_classes: dict, swaps: dict | None = None) -> dict:
    """Convert a UI-format workflow to an API prompt, the way the frontend's graphToPrompt does."""
    swaps = TINY_SWAPS if swaps is None else swaps
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4):  # muted / bypassed
            continue
        class_type = node["type"]
        if class_type in ("Note", "MarkdownNote", "Reroute"):
            continue
        if class_type not in node_classes:
            raise KeyError(f"workflow node {node['id']} has unknown type {class_type!r}")
        inputs = {}
        values = list(node.get("widgets_values") or [])
        index = 0
        for name, options in _widget_inputs(node_classes[class_type]):
            if index < len(values):
                inputs[name] = values[index]
            index += 1
            if options.get("control_after_generate"):
                index += 1
            if options.get("image_upload"):
                index += 1
        for socket in node.get("inputs", []):
            link_id = socket.get("link")
            if link_id is None:
                continue
            link = links[link_id]
            inputs[socket["name"]] = [str(link[1]), link[2]]
        if class_type in swaps:
            swap = swaps[class_type]
            class_type, inputs = swap(inputs) if callable(swap) else (swap[0], swap[1](inputs))
        prompt[str(node["id"])] = {"class_type": class_type, "inputs": inputs}
    return prompt


def example_workflows() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def temp_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="gs-host-"))


class PickleOnly:
    """An object only a full unpickling can restore (test checkpoints that weights-only loading must refuse)."""

    def __init__(self):
        self.note = "not a tensor"
