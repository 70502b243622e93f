"""The pack's layering (docs/adding_a_method.md): guidance/ never imports ComfyUI or another method's maths,
nodes/toolkit/ never imports a method, a method never imports another method, node classes are named after their
node ids, the registration list is explicit, and listing the nodes touches no file."""
import ast
import asyncio
import sys
from pathlib import Path

import pytest

from devkit import harness

ROOT = harness.ROOT
SHARED_GUIDANCE = {"checks", "schedules", "palette", "loss_scale"}  # guidance modules every method may use
NOT_METHODS = {"__init__", "extension", "toolkit"}


def relative_imports(path: Path, package: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The modules ``path`` imports inside the pack, as tuples of names from the pack root (``from .x import y``
    gives both ``x`` and ``x.y``: y may be a module)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            target = base + tuple(filter(None, (node.module or "").split(".")))
            found.append(target)
            found.extend(target + (alias.name,) for alias in node.names)
    return found


def pack_modules(folder: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield path, parts, parts[:-1]


def capability(parts: tuple[str, ...]) -> str | None:
    """nodes/<capability>.py or nodes/<capability>/...; None for the toolkit and the registration."""
    if len(parts) < 2 or parts[0] != "nodes" or parts[1] in NOT_METHODS:
        return None
    return parts[1]


def test_the_toolkit_imports_no_method():
    for path, parts, package in pack_modules("nodes/toolkit"):
        for target in relative_imports(path, package):
            assert target[0] != "nodes" or len(target) < 2 or target[1] == "toolkit", (path.name, target)


def test_no_method_imports_another_method():
    for path, parts, package in pack_modules("nodes"):
        own = capability(parts)
        if own is None:
            continue
        for target in relative_imports(path, package):
            other = capability(target)
            assert other in (None, own), f"{'/'.join(parts)} imports the method module {'.'.join(target)}"


def test_method_maths_imports_only_shared_guidance():
    for path, parts, package in pack_modules("guidance"):
        for target in relative_imports(path, package):
            if target[0] == "guidance" and len(target) > 1 and target[1] != parts[-1]:
                assert target[1] in SHARED_GUIDANCE, f"{path.name} imports guidance.{target[1]}"


def test_node_classes_are_named_after_their_node_ids_and_listed_once(host):
    extension = harness.loaded_module(f"{harness.PACK_NAME}.nodes.extension")
    ids = [node.GET_SCHEMA().node_id for node in extension.NODES]
    assert len(set(ids)) == len(ids)
    assert [f"GS_{node.__name__}" for node in extension.NODES] == ids
    ours = {name for name in host.nodes.NODE_CLASS_MAPPINGS if name.startswith("GS_") and not name.startswith("GS_Test")}
    assert ours == set(ids)


def test_listing_the_nodes_touches_no_file(host):
    """get_node_list opens, writes and creates nothing (start-up work is on_load's); an audit hook watches."""
    extension = harness.loaded_module(f"{harness.PACK_NAME}.nodes.extension")
    watched = {"open", "os.mkdir", "os.rename", "os.remove", "shutil.copyfile", "os.symlink"}
    events = []
    listening = [True]

    def audit(event, args):
        if listening[0] and event in watched:
            events.append((event, str(args[0])[:120]))
    sys.addaudithook(audit)  # cannot be removed: it stops listening below
    try:
        listed = asyncio.run(extension.GuidedSynthesisExtension().get_node_list())
    finally:
        listening[0] = False
    assert listed == extension.NODES and events == []


def test_start_up_work_runs_once(host, monkeypatch):
    extension = harness.loaded_module(f"{harness.PACK_NAME}.nodes.extension")
    calls = []
    monkeypatch.setattr(extension.GuidedSynthesisExtension, "started", False)
    monkeypatch.setattr(extension.model_files, "register_model_folders", lambda: calls.append("folders"))
    monkeypatch.setattr(extension.examples, "install_example_inputs", lambda: calls.append("examples"))
    monkeypatch.setattr(extension, "install_prompt_check", lambda nodes: calls.append("check"))
    asyncio.run(extension.GuidedSynthesisExtension().on_load())
    asyncio.run(extension.GuidedSynthesisExtension().on_load())  # a host that calls on_load after the entrypoint
    assert calls == ["folders", "examples", "check"]


@pytest.mark.parametrize("folder", ["nodes", "guidance"])
def test_the_pack_logs_under_one_logger(folder):
    """Modules log through nodes/toolkit/log.py (``guided_synthesis.<name>``), never ``getLogger(__name__)``
    (under ComfyUI a module's name is the pack folder's file-system path)."""
    for path, parts, _ in pack_modules(folder):
        text = path.read_text()
        assert "getLogger(__name__)" not in text, path
        if parts[-1] != "log":
            assert "logging.getLogger(" not in text, f"{path}: use nodes/toolkit/log.py's logger()"
