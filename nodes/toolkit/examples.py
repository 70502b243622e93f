"""The example workflows' input paintings, copied into ComfyUI's input folder when the pack loads.

The workflows in ``example_workflows/`` (ComfyUI's *Browse Templates*) name their paintings as files of the
input folder (``guided_synthesis_strokes.png`` in Load Image, ``guided_synthesis_canvas.png [input]`` in
Stroke Canvas). So that they run as downloaded, every file of ``example_workflows/inputs/`` is copied there
once when the pack starts (the extension's ``on_load``, see nodes/extension.py).

A file of the same name already in the input folder is never replaced (it may be the user's own); a folder
that cannot be written is logged, never raised. Users who move workflows elsewhere copy the files by hand
(README).
"""
from __future__ import annotations

import os
from pathlib import Path

from .log import logger

EXAMPLE_INPUTS = Path(__file__).resolve().parents[2] / "example_workflows" / "inputs"

LOG = logger("examples")


def install_example_inputs(input_dir: str | os.PathLike | None = None,
                           source: Path = EXAMPLE_INPUTS) -> list[str]:
    """Copy each file of ``source`` into the input folder unless a file of that name is already there.

    ``input_dir`` defaults to ``folder_paths.get_input_directory()``. Returns the names copied. Never
    raises: a failure (read-only or missing folder, full disk) is logged and the other files are still tried.
    """
    try:
        if input_dir is None:
            import folder_paths

            input_dir = folder_paths.get_input_directory()
        target = Path(input_dir)  # the top of the input folder: Load Image "name", Stroke Canvas "name [input]"
        files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
    except Exception as error:  # noqa: BLE001 - loading the pack must never fail here
        LOG.warning("Guided Synthesis: example paintings not copied to the input folder: %s", error)
        return []
    copied = []
    for file in files:
        destination = target / file.name
        if destination.exists():
            continue  # the user's file (or an earlier copy): never overwritten
        try:
            target.mkdir(parents=True, exist_ok=True)
            data = file.read_bytes()
            # "x": create only, so a file that appeared meanwhile is not replaced either
            with open(destination, "xb") as handle:
                try:
                    handle.write(data)
                except BaseException:
                    handle.close()
                    destination.unlink(missing_ok=True)  # no half-written painting left behind
                    raise
        except FileExistsError:
            continue
        except Exception as error:  # noqa: BLE001
            LOG.warning("Guided Synthesis: could not copy the example painting %s into %s (%s); copy it by hand "
                        "from %s to run the example workflows", file.name, target, error, source)
            continue
        copied.append(file.name)
    if copied:
        LOG.info("Guided Synthesis: copied the example paintings %s into %s", ", ".join(copied), target)
    return copied
