"""Model folders the pack reads from (registered with folder_paths; no I/O, no downloads)."""
from __future__ import annotations

import os
from typing import Callable

import folder_paths

# name -> what it holds (README documents each)
MODEL_FOLDERS = {
    "clip_guidance": "open_clip weights (open_clip format) for CLIP semantic guidance",
    "lpips": "VGG16 trunk weights for LPIPS (SyncDiffusion)",
}


def register_model_folders() -> None:
    for name in MODEL_FOLDERS:
        path = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(name, path)
        else:
            folder_paths.folder_names_and_paths[name] = ([path], folder_paths.supported_pt_extensions)


def listed(folder: str) -> list[str]:
    """The files ComfyUI lists in model folder ``folder`` (sorted); none when the folder is not registered."""
    try:
        return folder_paths.get_filename_list(folder)
    except KeyError:
        return []


def find_entry(folder: str, input_name: str, expected: str, match: Callable[[str], bool],
               fallbacks: tuple[str, ...] = (),
               missing: str | Callable[[list[str]], str] | None = None) -> tuple[str, str]:
    """The one way the pack finds a model file: (name, full path) of the first file of models/``folder``
    (ComfyUI's sorted list, names relative to the folder) for which ``match(name)`` holds, else of the first
    existing path of ``fallbacks`` (name: its file name); else a ValueError naming the input, the folder and
    the expected file (``missing``: the method's own wording, or a function of the files found that gives it).
    No I/O beyond ComfyUI's folder listing, no downloads."""
    names = listed(folder)
    for name in names:
        if match(name):
            return name, folder_paths.get_full_path_or_raise(folder, name)
    for path in fallbacks:
        if os.path.isfile(path):
            return os.path.basename(path), path
    if callable(missing):
        raise ValueError(missing(names))
    raise ValueError(missing or f"{input_name}: needs {expected} in models/{folder} (files found: "
                                f"{', '.join(names) or 'none'})")


def find_file(folder: str, input_name: str, expected: str, match: Callable[[str], bool],
              fallbacks: tuple[str, ...] = (), missing: str | Callable[[list[str]], str] | None = None) -> str:
    """The full path :func:`find_entry` finds."""
    return find_entry(folder, input_name, expected, match, fallbacks, missing)[1]
