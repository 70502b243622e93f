"""Writes example_workflows/*.json (UI format) and their inputs and thumbnails.

Each module in scripts/workflows/ is one capability's examples: it defines WORKFLOWS
(name -> build(node_classes) -> workflow dict), INPUTS (file name -> make() -> PIL image,
written to example_workflows/inputs/) and THUMBNAILS (workflow name -> input file name or
a make() callable giving the thumbnail image).
Run: .venv/bin/python scripts/build_workflows.py
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import workflow_builder  # noqa: E402

OUT = workflow_builder.ROOT / "example_workflows"


def write_thumbnail(name: str, image) -> None:
    thumb = image.copy().convert("RGB")
    thumb.thumbnail((256, 256))
    thumb.save(OUT / f"{name}.jpg", quality=85)



def main() -> None:
    host = workflow_builder.harness.Host(workflow_builder.harness.temp_workdir())
    inputs_dir = OUT / "inputs"
    inputs_dir.mkdir(exist_ok=True)
    modules = [importlib.import_module(f"workflows.{p.stem}") for p in sorted((HERE / "workflows").glob("*.py"))
               if not p.stem.startswith("_")]
    images = {}
    for module in modules:
        for file_name, make in module.INPUTS.items():
            images[file_name] = make()
            images[file_name].save(inputs_dir / file_name)
    for module in modules:
        for name, build in module.WORKFLOWS.items():
            workflow = build(host.nodes.NODE_CLASS_MAPPINGS)
            (OUT / f"{name}.json").write_text(json.dumps(workflow, indent=2) + "\n")
            thumb = module.THUMBNAILS[name]
            write_thumbnail(name, images[thumb] if isinstance(thumb, str) else thumb())
            print("wrote", name)


if __name__ == "__main__":
    main()
