"""Pack conventions: node ids, categories, tooltips, descriptions, packaging metadata."""
import asyncio
import re
import tomllib

import harness


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
    for path in list((harness.ROOT / "nodes").glob("*.py")) + list((harness.ROOT / "guidance").glob("*.py")):
        text = path.read_text()
        assert '"cuda"' not in text and "'cuda'" not in text and "torch.cuda" not in text, path
        assert ".half()" not in text, path
        # fp16 only ever as an explicit user choice (e.g. a decoder-precision option), never hard-coded
        for line in text.splitlines():
            assert not re.search(r"(?<!b)float16", line) or "user-selected" in line, f"{path}: {line.strip()}"
