"""The pack-owned open_clip model CLIP semantic guidance backpropagates through, and its offline loader.

:class:`OpenCLIP` is the GS_OPEN_CLIP value: a frozen open_clip model (:class:`gradients.OwnedModule`), its
tokenizer and preprocessing config, under ComfyUI's model management through its own ModelPatcher.
:func:`load_open_clip` builds it from a local checkpoint in models/clip_guidance with the Hugging Face
libraries offline (:func:`hub_offline`): the file is read and checked against the architecture
(:func:`checkpoint_mismatch`) before any model is built; it downloads only when the user enables it.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import math
import os
import pickle
import re
import sys
from pathlib import Path

import torch

import comfy.model_management
import comfy.model_patcher
import folder_paths

from ...guidance import semantic
from . import gradients, log, model_files

LOG = log.logger("semantic")
FOLDER = "clip_guidance"
DEFAULT_ARCHITECTURE = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
CLIP_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _open_clip():
    import open_clip  # lazily: importing the pack loads no open_clip
    return open_clip


def architectures() -> list[str]:
    """open_clip.list_models(), the loader's architecture list. The schema is built when the pack loads, and
    importing open_clip costs seconds, so until something imports it the names are read the way open_clip
    reads them: the stems of its model_configs/*.json that hold embed_dim, vision_cfg and text_cfg, in its
    natural sort order."""
    try:
        if "open_clip" in sys.modules:
            return list(sys.modules["open_clip"].list_models())
        spec = importlib.util.find_spec("open_clip")  # locates the package without running it
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("No module named 'open_clip'")
        names = []
        for location in spec.submodule_search_locations:
            for path in Path(location, "model_configs").glob("*.json"):
                config = json.loads(path.read_text())
                if all(key in config for key in ("embed_dim", "vision_cfg", "text_cfg")):
                    names.append(path.stem)
        if not names:
            raise ImportError("open_clip has no model_configs")
        return sorted(set(names), key=lambda n: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", n.lower())])
    except Exception as error:  # open_clip missing or broken: the loader says so when it runs
        LOG.warning("open_clip is not usable (%s); CLIP semantic guidance is unavailable", error)
        return [DEFAULT_ARCHITECTURE]


def _clip_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16  # user-selected only
    # auto: bf16 where ComfyUI would use it on this device, else fp32 (the losses are fp32 either way)
    if device.type != "cpu" and comfy.model_management.should_use_bf16(device):
        return torch.bfloat16
    return torch.float32


class OpenCLIP(gradients.OwnedModule):
    """The GS_OPEN_CLIP value: a frozen open_clip model, its tokenizer and preprocessing config. Pack-owned,
    under ComfyUI's model management through its own ModelPatcher: a guided MODEL lists it as an additional
    model, so the sampler loads it together with the UNet (memory accounted for both), and ComfyUI offloads
    it when something else needs the room, as it does with its own models."""

    is_gs_open_clip = True

    def __init__(self, model: torch.nn.Module, tokenizer, name: str, dtype: torch.dtype):
        self.module, self.tokenizer, self.name, self.dtype = model, tokenizer, name, dtype
        cfg = _open_clip().get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean, self.std = tuple(cfg.get("mean", (0.5,) * 3)), tuple(cfg.get("std", (0.5,) * 3))
        self.offload_device = comfy.model_management.unet_offload_device()
        self.patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                                        offload_device=self.offload_device)
        visual = model.visual
        resblocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if resblocks is not None:
            self.style_indices = semantic.style_layer_indices(len(resblocks))
        elif hasattr(visual, "layer4"):
            self.style_indices = [0, 1, 2, 3, 4]  # stem and layer1-4, as SDG
        else:
            self.style_indices = 3  # other towers (timm): the last three blocks

    def __deepcopy__(self, memo):
        return self

    @property
    def model(self) -> torch.nn.Module:
        return self.module

    @classmethod
    def wrap(cls, model: torch.nn.Module, name: str, precision: str = "auto", tokenizer=None) -> "OpenCLIP":
        """Freeze ``model`` (built outside inference mode) in the chosen precision; ``tokenizer`` None: open_clip's
        for ``name``."""
        dtype = _clip_dtype(precision, comfy.model_management.get_torch_device())
        gradients.freeze(model, dtype=dtype)
        return cls(model, tokenizer if tokenizer is not None else _open_clip().get_tokenizer(name), name, dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def load(self) -> None:
        """On the torch device (a no-op when the sampler loaded it with the UNet), with weights autograd can
        save for backward."""
        comfy.model_management.load_models_gpu([self.patcher])
        gradients.make_grad_safe(self.model)

    def encode_text(self, text: str) -> torch.Tensor:
        with gradients.grad_enabled(), torch.no_grad():
            tokens = self.tokenizer([text]).to(self.device)
            return self.model.encode_text(tokens).float()

    def features(self, pixels: torch.Tensor, style: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(embeddings [N, D] fp32, intermediate features for the style Grams or []) of normalised views."""
        pixels = pixels.to(self.device, self.dtype)
        if not style:
            return self.model.encode_image(pixels).float(), []
        out = self.model.visual.forward_intermediates(pixels, indices=self.style_indices)
        return out["image_features"].float(), [f.float() for f in out["image_intermediates"]]

    def views(self, image: torch.Tensor, cutouts: int, generator: torch.Generator | None) -> torch.Tensor:
        """Normalised CLIP views of [B, 3, H, W] images in [0, 1] (differentiable; no 8-bit rounding)."""
        generator = generator or torch.Generator().manual_seed(0)
        views = semantic.make_views(image, self.size, cutouts, generator)
        return semantic.normalise(views, self.mean, self.std)


# ----------------------------------------------------------------------------------------------
# Loading

HUB_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
# text_cfg entries that name a Hugging Face Hub repository, and what the loader takes from it
HUB_SOURCES = (("hf_tokenizer_name", "tokenizer"), ("hf_model_name", "text tower configuration"))
# tensors load_checkpoint fills or resizes itself (so their absence or another length is not a mismatch)
RESIZED = ("positional_embedding", "visual.positional_embedding", "text.positional_embedding")
FILLED = ("logit_bias",)
DROPPED = ("text.transformer.embeddings.position_ids",)


def _folder_hint() -> str:
    return f"models/{FOLDER}"


def _expected_file(architecture: str) -> str:
    return (f"an open_clip checkpoint for {architecture} (e.g. open_clip_model.safetensors from the Hugging Face "
            f"repository of an open_clip {architecture} model, renamed as you like)")


@contextlib.contextmanager
def hub_offline():
    """The Hugging Face libraries offline for the duration (the variables they read, and huggingface_hub's own
    flag, which it reads from the environment once at import), restored afterwards."""
    saved = {name: os.environ.get(name) for name in HUB_OFFLINE_VARIABLES}
    constants = sys.modules.get("huggingface_hub.constants")
    saved_flag = getattr(constants, "HF_HUB_OFFLINE", None)
    os.environ.update({name: "1" for name in HUB_OFFLINE_VARIABLES})
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_flag


def _hub_caches() -> list[str]:
    """Where a hub repository may already be: the Hugging Face cache, and models/clip_guidance (the cache the
    loader downloads into)."""
    caches = []
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        caches.append(constants.HF_HUB_CACHE)
    else:
        home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
        caches.append(os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"))
    return caches + list(folder_paths.get_folder_paths(FOLDER))


def cached_hub_folder(repo: str) -> str | None:
    """The local snapshot folder of hub repository ``repo`` (files only: no hub call, no token), or None."""
    if os.path.isdir(repo):
        return repo
    for cache in _hub_caches():
        root = os.path.join(cache, "models--" + repo.replace("/", "--"))
        snapshots = os.path.join(root, "snapshots")
        if not os.path.isdir(snapshots):
            continue
        try:
            with open(os.path.join(root, "refs", "main"), encoding="utf-8") as ref:
                candidates = [ref.read().strip()]
        except OSError:
            candidates = sorted(os.listdir(snapshots))
        for name in candidates:
            folder = os.path.join(snapshots, name)
            if os.path.isdir(folder) and os.listdir(folder):
                return folder
    return None


def offline_config(architecture: str) -> dict:
    """``architecture``'s open_clip config with every hub repository it names replaced by its local snapshot
    folder; a clear error when one is not cached (download is off, so the loader never asks the hub)."""
    config = copy.deepcopy(_open_clip().get_model_config(architecture))
    text = config.setdefault("text_cfg", {})
    missing = []
    for key, what in HUB_SOURCES:
        repo = text.get(key)
        if not repo:
            continue
        folder = cached_hub_folder(repo)
        if folder is None:
            missing.append(f"its {what} ({repo})")
        else:
            text[key] = folder
    if not text.get("hf_tokenizer_name") and "siglip" in architecture.lower():
        missing.append("its SigLIP sentencepiece vocabulary (open_clip fetches it from the web)")
    if missing:
        raise ValueError(f"architecture: {architecture} needs {' and '.join(missing)} from the Hugging Face Hub, "
                         f"which is not in the local cache, and download is off, so the pack does not fetch it: "
                         f"switch download on once (it is cached for later offline runs), or choose an "
                         f"architecture with open_clip's own text tower (e.g. ViT-B-32, ViT-L-14, RN50, coca_ViT-B-32)")
    return config


def _tokenizer(architecture: str, config: dict):
    """open_clip's tokenizer for ``architecture``, built from ``config`` (local hub folders, see
    :func:`offline_config`) instead of open_clip's look-up by name."""
    open_clip = _open_clip()
    text = config.get("text_cfg", {})
    if text.get("hf_tokenizer_name"):
        from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer
        return HFTokenizer(text["hf_tokenizer_name"], context_length=text.get("context_length", DEFAULT_CONTEXT_LENGTH),
                           tokenizer_mode=text.get("tokenizer_mode"), **text.get("tokenizer_kwargs", {}))
    return open_clip.get_tokenizer(architecture)


def _create(architecture: str, config: dict, device: str = "cpu") -> torch.nn.Module:
    """The architecture from ``config``, no weights fetched (pretrained towers off)."""
    text = dict(config.get("text_cfg", {}))
    if "hf_model_name" in text:
        text["hf_model_pretrained"] = False
    return _open_clip().create_model(architecture, pretrained=None, pretrained_image=False, pretrained_text=False,
                                     device=device, text_cfg=text, vision_cfg=dict(config.get("vision_cfg", {})))


def _shown(checkpoint: str) -> str:
    return f"{_folder_hint()}/{checkpoint}"


def _read_checkpoint(path: str, checkpoint: str, architecture: str) -> dict:
    """The checkpoint's tensors as an open_clip state dict {name: tensor}; safetensors files by their header
    only (the tensors are read later, once the names and shapes fit). Clear errors for junk, empty, truncated
    and pickle-needing files."""
    shown = _shown(checkpoint)
    if path.lower().endswith((".safetensors", ".sft")):
        from safetensors import safe_open
        try:
            with safe_open(path, framework="pt") as file:
                state = {key: _SafetensorsEntry(path, key, tuple(file.get_slice(key).get_shape()))
                         for key in file.keys()}
        except Exception as error:
            first = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
            raise ValueError(f"checkpoint: {shown} is not a readable safetensors file ({first}): it is empty, "
                             f"truncated or not safetensors; put {_expected_file(architecture)} there") from None
    else:
        loaded = None
        for mmap in (True, False):  # the legacy (non-zip) format cannot be memory-mapped
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
                break
            except pickle.UnpicklingError as error:
                if "global" in str(error).lower():  # a class or function the weights-only unpickler refuses
                    raise ValueError(f"checkpoint: {shown} needs full unpickling (it holds Python objects, not "
                                     f"only tensors), which can run arbitrary code; convert it to safetensors or "
                                     f"use a weights-only open_clip file") from None
                failure = error
            except Exception as error:
                failure = error
        if loaded is None:
            raise ValueError(f"checkpoint: {shown} is not a readable torch file ({type(failure).__name__}): it is "
                             f"empty, truncated or not a checkpoint; use safetensors or an open_clip .bin/.pt") from None
        if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise ValueError(f"checkpoint: {shown} does not hold a state dict (names -> tensors, or one under "
                             f"'state_dict'); use an open_clip checkpoint")
        state = loaded
    if not state:
        raise ValueError(f"checkpoint: {shown} holds no tensors (an empty state dict); put "
                         f"{_expected_file(architecture)} there")
    if next(iter(state)).startswith("module"):  # saved from DataParallel (as open_clip's own loader strips it)
        state = {key[7:]: value for key, value in state.items()}
    return state


class _SafetensorsEntry:
    """A tensor of a safetensors file known by its shape until it is read."""

    def __init__(self, path: str, key: str, shape: tuple):
        self.path, self.key, self.shape = path, key, shape


def _materialise(state: dict) -> dict:
    paths = {entry.path for entry in state.values() if isinstance(entry, _SafetensorsEntry)}
    if not paths:
        return state
    from safetensors.torch import load_file
    tensors = {}
    for path in paths:
        tensors[path] = load_file(path, device="cpu")
    return {key: tensors[entry.path][entry.key] if isinstance(entry, _SafetensorsEntry) else entry
            for key, entry in state.items()}


def _dims(shape) -> str:
    return "[" + ",".join(str(int(v)) for v in shape) + "]"


def _listed(keys, limit: int = 3) -> str:
    keys = list(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def checkpoint_mismatch(architecture: str, expected: dict, state: dict) -> str | None:
    """What keeps ``state`` (name -> tensor or entry with a shape) from loading into ``architecture`` whose
    tensors are ``expected`` (name -> shape), after the conversions open_clip's ``load_checkpoint`` makes; None
    when it fits."""
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    if any(key.startswith("image_encoder.") for key in shapes):
        return None  # Apple MobileCLIP's own layout: open_clip converts it while loading
    if "positional_embedding" in shapes and "positional_embedding" not in expected and "text_projection" in shapes:
        shapes = {("text." + key if key.split(".")[0] in ("text_projection", "positional_embedding",
                                                           "token_embedding", "transformer", "ln_final") else key): v
                  for key, v in shapes.items()}
    for key in DROPPED:
        if key not in expected:
            shapes.pop(key, None)
    order = {key: index for index, key in enumerate(expected)}
    missing = [key for key in expected if key not in shapes and key not in FILLED]
    unexpected = [key for key in shapes if key not in expected]
    differ = [key for key in shapes if key in expected and key not in RESIZED
              and tuple(expected[key]) != shapes[key]
              and not (key.startswith("logit_") and math.prod(expected[key]) == math.prod(shapes[key]))]
    if not missing and not unexpected and not differ:
        return None
    if len(unexpected) == len(shapes):
        return (f"none of its {len(shapes)} tensors is a tensor of {architecture} (it has {_listed(unexpected, 2)}; "
                f"{architecture} has {_listed(expected, 2)}): it is not an open_clip checkpoint of this "
                f"architecture")
    parts = []
    if differ:  # an image-tower weight of most dimensions first (the patch or stem convolution: most telling)
        key = min(differ, key=lambda k: (not k.startswith("visual."), -len(expected[k]), order[k]))
        parts.append(f"{len(differ)} tensor shape{'s' if len(differ) > 1 else ''} differ (the file has {key} "
                     f"{_dims(shapes[key])}, {architecture} expects {_dims(expected[key])})")
    if missing:
        parts.append(f"{len(missing)} of the {len(expected)} tensors of {architecture} are missing "
                     f"({_listed(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor{'s' if len(unexpected) > 1 else ''} that {architecture} does not "
                     f"have ({_listed(unexpected)})")
    return "; ".join(parts)


def _expected_shapes(architecture: str, config: dict) -> dict:
    """Tensor names and shapes of ``architecture``, from a model built on the meta device (no memory, no
    weights initialised)."""
    with torch.device("meta"):
        model = _create(architecture, config, device="meta")
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _load_weights(model: torch.nn.Module, state: dict) -> None:
    """open_clip's ``load_checkpoint`` steps on an already read state dict (strict)."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed
    state = convert_state_dict(model, dict(state))
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for name in ("logit_scale", "logit_bias"):
        current = getattr(model, name, None)
        if name in state and current is not None and current.ndim != state[name].ndim:
            state[name] = state[name].reshape(current.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
        state["logit_bias"] = torch.zeros_like(model.logit_bias)
    for key in DROPPED:
        if key in state and key not in model.state_dict():
            del state[key]
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    model.load_state_dict(state, strict=True)


def load_open_clip(architecture: str, checkpoint: str, precision: str, download: bool = False,
                   pretrained: str = DEFAULT_PRETRAINED) -> OpenCLIP:
    open_clip = _open_clip()
    if architecture not in open_clip.list_models():
        raise ValueError(f"architecture: {architecture!r} is not an open_clip model")
    if precision not in CLIP_PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of the accepted values: {', '.join(CLIP_PRECISIONS)}")
    with gradients.inference_mode_off():
        if download:
            tags = open_clip.list_pretrained_tags_by_model(architecture)
            if pretrained not in tags:
                raise ValueError(f"pretrained: {pretrained!r} is not a published tag of {architecture}; "
                                 f"known tags: {', '.join(tags) or 'none'}")
            if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
                raise ValueError(f"download: HF_HUB_OFFLINE is set, so nothing is downloaded; put "
                                 f"{_expected_file(architecture)} into {_folder_hint()} and switch download off")
            cache = folder_paths.get_folder_paths(FOLDER)[0]
            try:
                model = open_clip.create_model(architecture, pretrained=pretrained, cache_dir=cache)
                tokenizer = open_clip.get_tokenizer(architecture)
            except Exception as error:
                why = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}" if str(error) else type(error).__name__
                raise ValueError(f"download: could not get {architecture}/{pretrained} ({why}); put {_expected_file(architecture)} "
                                 f"into {_folder_hint()} and switch download off") from None
            return OpenCLIP.wrap(model, architecture, precision, tokenizer)
        path = checkpoint_path(architecture, checkpoint)
        with hub_offline():
            state = _read_checkpoint(path, checkpoint, architecture)  # the file first: no architecture is built for a bad one
            config = offline_config(architecture)
            mismatch = checkpoint_mismatch(architecture, _expected_shapes(architecture, config), state)
            if mismatch is not None:
                raise ValueError(f"checkpoint: {_shown(checkpoint)} does not fit the architecture {architecture}: "
                                 f"{mismatch}; choose the architecture it was saved from")
            model = _create(architecture, config)
            try:
                _load_weights(model, _materialise(state))
            except (RuntimeError, ValueError) as error:
                first = str(error).splitlines()[0][:200]
                raise ValueError(f"checkpoint: {_shown(checkpoint)} does not fit the architecture "
                                 f"{architecture} ({first}); choose the architecture it was saved from") from None
            tokenizer = _tokenizer(architecture, config)
    return OpenCLIP.wrap(model, architecture, precision, tokenizer)


def checkpoint_path(architecture: str, checkpoint: str) -> str:
    """The full path of ``checkpoint`` in models/clip_guidance; a clear error naming the input, the folder and
    the file expected when it is not chosen or not there."""
    def missing(files: list[str]) -> str:
        what = f"{checkpoint!r} is not in" if checkpoint else "no file chosen from"
        return (f"checkpoint: {what} {_folder_hint()}; put {_expected_file(architecture)} there "
                f"(files found: {', '.join(files) or 'none'}), or switch download on")
    return model_files.find_file(FOLDER, "checkpoint", _expected_file(architecture),
                                 lambda name: bool(checkpoint) and name == checkpoint, missing=missing)
