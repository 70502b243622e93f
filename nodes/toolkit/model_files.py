"""Model folders the pack reads from (registered with folder_paths; no I/O, no downloads)."""
from __future__ import annotations

import os

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
