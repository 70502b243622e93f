"""Writes example_workflows/*.json (UI format) and their inputs and thumbnails.

Each module in scripts/workflows/ is one capability's examples: it defines WORKFLOWS
(template name -> build(node_classes) -> workflow dict) and INPUTS (file name -> make() -> PIL image,
written to example_workflows/inputs/). The template name is the file name, which is the title the
frontend's template browser shows. THUMBNAILS below gives each template its diagram (scripts/thumbnails.py),
drawn from the input painting it reads; the registry icon is written to docs/images/icon.png.
Run: .venv/bin/python scripts/build_workflows.py
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import thumbnails
import workflow_builder
from workflows import canvas, flux, gradop, panorama, regions, sdedit, semantic

HERE = Path(__file__).resolve().parent
OUT = workflow_builder.ROOT / "example_workflows"
ICON = workflow_builder.ROOT / "docs" / "images" / "icon.png"

# template -> (its input painting, or None; the diagram drawn from it)
THUMBNAILS = {
    sdedit.SWEEP: (workflow_builder.STROKES_FILE, thumbnails.sdedit_sweep),
    sdedit.SIGMAS: (workflow_builder.STROKES_FILE, thumbnails.sdedit_sigmas),
    gradop.STROKES: (workflow_builder.STROKES_FILE, thumbnails.gradop_strokes),
    gradop.SAMPLER: (workflow_builder.STROKES_FILE, thumbnails.gradop_sampler_regions),
    regions.TITLE: (workflow_builder.STROKES_FILE, thumbnails.regions_words),
    canvas.TITLE: (canvas.CANVAS_FILE, thumbnails.stroke_canvas),
    semantic.TEXT: (workflow_builder.STROKES_FILE, thumbnails.semantic("text")),
    semantic.CONTENT: (workflow_builder.STROKES_FILE, thumbnails.semantic("content")),
    semantic.STYLE: (workflow_builder.STROKES_FILE, thumbnails.semantic("style")),
    panorama.WIDE: (None, thumbnails.panorama_wide),
    panorama.LOOP: (None, thumbnails.panorama_360),
    flux.SDEDIT: (workflow_builder.STROKES_FILE, thumbnails.flux_sdedit),
    flux.GRADOP: (workflow_builder.STROKES_FILE, thumbnails.flux_gradop),
    flux.SEMANTIC: (workflow_builder.STROKES_FILE, thumbnails.flux_semantic),
    flux.PANORAMA: (None, thumbnails.flux_panorama),
    flux.REGIONS: (workflow_builder.STROKES_FILE, thumbnails.flux_regions),
}


def write_thumbnail(name: str, image) -> None:
    image.convert("RGB").save(OUT / f"{name}.jpg", quality=88)



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
            painting, draw = THUMBNAILS[name]
            write_thumbnail(name, draw(images[painting] if painting else None))
            print("wrote", name)
    thumbnails.icon().save(ICON)


if __name__ == "__main__":
    main()
