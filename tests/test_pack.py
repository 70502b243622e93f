"""Pack conventions: node ids, categories, tooltips, descriptions, packaging metadata."""
import asyncio
import re
import tomllib

from devkit import harness


def pack_nodes(host):
    module = harness.loaded_module(f"{harness.PACK_NAME}.nodes.extension")
    return asyncio.run(module.GuidedSynthesisExtension().get_node_list())


def test_every_node_is_prefixed_categorised_described_and_every_input_has_a_tooltip(host):
    nodes = pack_nodes(host)
    assert nodes
    for node in nodes:
        schema = node.GET_SCHEMA()
        assert schema.node_id.startswith("GS_"), schema.node_id
        assert schema.category.startswith("guided_synthesis/"), schema.category
        assert schema.description and len(schema.description) > 30, schema.node_id
        assert schema.display_name, schema.node_id
        for item in schema.inputs:
            assert item.tooltip, f"{schema.node_id}.{item.id} has no tooltip"
        assert host.nodes.NODE_CLASS_MAPPINGS[schema.node_id] is not None


def type_check_prompts() -> dict:
    """(pack node id -> (prompt, the wrong-typed input, the message)); each prompt is otherwise valid."""
    base = {"1": {"class_type": "GS_TestTinyCheckpoint", "inputs": {"kind": "sd15", "seed": 0}},
            "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 32, "batch_size": 1}}}
    loader = {"architecture": "GS-Test-Tiny-ViT", "checkpoint": "gs_tiny_vit.safetensors", "precision": "fp32",
              "pretrained": "laion2b_s34b_b79k"}
    decode = {"samples": ["6", 0], "vae": ["1", 2], "tile_size": 64, "overlap": 16}
    return {
        "download": ({**base, "9": {"class_type": "GS_OpenCLIPLoader", "inputs": {**loader, "download": "false"}},
                      "10": {"class_type": "GS_TestOpenCLIPProbe", "inputs": {"clip_model": ["9", 0]}}},
                     "download: expected a boolean (true or false), got the string 'false'"),
        "circular": ({**base, "9": {"class_type": "GS_SeamlessDecode", "inputs": {**decode, "circular": "false"}},
                      "10": {"class_type": "GS_TestCapture", "inputs": {"key": "x", "image": ["9", 0]}}},
                     "circular: expected a boolean (true or false), got the string 'false'"),
        "tile_size": ({**base, "9": {"class_type": "GS_SeamlessDecode", "inputs": {**decode, "tile_size": "64",
                                                                                    "circular": False}},
                       "10": {"class_type": "GS_TestCapture", "inputs": {"key": "x", "image": ["9", 0]}}},
                      "tile_size: expected a whole number, got the string '64'"),
    }


def test_wrong_typed_widget_values_are_refused_naming_the_input(host, clip_guidance, monkeypatch):
    """ComfyUI converts widget values with bool()/int()/float() while validating ("false" -> True). The pack's
    on-prompt check (installed into the server; applied here as POST /prompt applies it) refuses them at
    validation, naming the input and its type; the node's own check refuses them in a direct call."""
    import copy
    extension = harness.loaded_module(f"{harness.PACK_NAME}.nodes.extension")
    host_module = harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.host")
    check = extension.prompt_check(pack_nodes(host))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the control below must not download
    prompts = type_check_prompts()
    # without the check ComfyUI runs the loader with download "false" converted to True
    result, server = host.run(copy.deepcopy(prompts["download"][0]), expect_success=False)
    assert "validation_error" not in result
    assert host.node_error(server).startswith("pretrained: 'laion2b_s34b_b79k' is not a published tag")  # download-only
    for name, (prompt, message) in prompts.items():
        check({"prompt": prompt})
        result, _ = host.run(prompt, expect_success=False)
        assert "validation_error" in result, (name, result)
        errors = result["node_errors"]["9"]["errors"]
        assert [error["extra_info"]["input_name"] for error in errors] == [name], errors
        assert message in errors[0]["details"], errors
    semantic = harness.loaded_module(f"{harness.PACK_NAME}.nodes.semantic")
    try:
        host_module.check_widget_values(semantic.OpenCLIPLoader, {"download": "false"})
    except ValueError as error:
        assert str(error) == "download: expected a boolean (true or false), got the string 'false'"
    else:
        raise AssertionError("a string for a BOOLEAN input was accepted")
    host_module.check_widget_values(semantic.OpenCLIPLoader, {"download": False, "precision": "fp32"})


def test_pyproject_and_requirements_agree():
    project = tomllib.loads((harness.ROOT / "pyproject.toml").read_text())
    meta = project["project"]
    assert meta["name"] == "guided-synthesis"
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    assert meta["requires-python"].startswith(">=3.1")
    assert meta["license"] == {"file": "LICENSE"}
    assert "Repository" in meta["urls"]
    comfy = project["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert key in comfy
    assert comfy["requires-comfyui"] == ">=0.3.75"

    def names(lines):
        return {re.split(r"[<>=!~ ]", line.strip())[0].lower().replace("_", "-")
                for line in lines if line.strip() and not line.strip().startswith("#")}

    deps = names(meta["dependencies"])
    reqs = names((harness.ROOT / "requirements.txt").read_text().splitlines())
    assert deps == reqs
    assert {"lpips", "open-clip-torch", "safetensors", "numpy"} <= deps
    assert not deps & {"torch", "torchvision", "torchaudio"}
    assert "GNU GENERAL PUBLIC LICENSE" in (harness.ROOT / "LICENSE").read_text()[:200]


def test_no_device_literals_or_fp16_in_pack_code():
    for path in list((harness.ROOT / "nodes").rglob("*.py")) + list((harness.ROOT / "guidance").rglob("*.py")):
        text = path.read_text()
        assert '"cuda"' not in text and "'cuda'" not in text and "torch.cuda" not in text, path
        assert ".half()" not in text, path
        # fp16 only ever as an explicit user choice (e.g. a decoder-precision option), never hard-coded
        for line in text.splitlines():
            assert not re.search(r"(?<!b)float16", line) or "user-selected" in line, f"{path}: {line.strip()}"


def pack_checkout(target):
    """The pack's own files (tracked, or new and not ignored) copied to ``target``: what a clone holds, without
    what set-up and tests leave in the repository (.venv/, .comfyui/, test-artifacts/)."""
    import shutil
    import subprocess

    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=harness.ROOT, capture_output=True, check=True, timeout=60).stdout
        files = [name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.SubprocessError):  # not a git checkout: the same files by .gitignore's names
        ignored = {".git", ".venv", ".comfyui", "test-artifacts", "__pycache__", ".pytest_cache", ".whl"}
        files = [str(p.relative_to(harness.ROOT)) for p in harness.ROOT.rglob("*")
                 if p.is_file() and not ignored & set(p.relative_to(harness.ROOT).parts)]
    for name in files:
        source = harness.ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def test_comfy_test_lint_strict_passes(tmp_path):
    """The community's static check, `comfy-test lint --strict` (comfy-test, pinned in requirements-test.txt):
    its SYNTAX level (cp1252-safe sources, no hard-coded devices) and its JAVASCRIPT level (every
    registerExtension name under the namespace it derives from pyproject's [tool.comfy] DisplayName, lower
    case and alphanumerics only: "guidedsynthesis"; no globals, no shared-document writes, no hooks on nodes
    the pack does not ship), with warnings counted as failures. No network, no server.

    Run on a copy of the pack's files: in the repository root it would also read .venv/ and .comfyui/ (the
    JAVASCRIPT level takes every node id it finds in any .py below the pack as the pack's own)."""
    import subprocess
    import sys

    pack = pack_checkout(tmp_path / harness.PACK_NAME)
    result = subprocess.run([sys.executable, "-m", "comfy_test", "lint", "--strict", str(pack)],
                            capture_output=True, text=True, timeout=300)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "[SYNTAX] PASSED" in report and "[JAVASCRIPT] PASSED" in report, report
    assert "enforcing DisplayName namespace 'guidedsynthesis'" in report, report
    assert "0 error(s), 0 warning(s)" in report, report


def test_the_frontends_the_browser_tests_name_are_the_ones_installed():
    """scripts/setup.sh installs the newer frontend the browser tests run on; the pinned one is the host's."""
    setup = (harness.ROOT / "scripts" / "setup.sh").read_text()
    support = (harness.ROOT / "tests" / "browser" / "browser_support.py").read_text()
    newer = re.search(r'^NEWER_FRONTEND = "([^"]+)"', support, re.M).group(1)
    pinned = re.search(r'^PINNED_FRONTEND = "([^"]+)"', support, re.M).group(1)
    assert re.search(r'^FRONTEND_PIN="comfyui-frontend-package==' + re.escape(newer) + '"', setup, re.M), newer
    host_requirements = (harness.host_path() / "requirements.txt").read_text()
    assert f"comfyui-frontend-package=={pinned}" in host_requirements
    pin = re.search(r"^comfy-test==\S+", (harness.ROOT / "requirements-test.txt").read_text(), re.M)
    assert pin, "comfy-test is pinned in requirements-test.txt"
