"""CLIP semantic guidance (after SDG): an open_clip loader and a MODEL patch that steers any sampler towards a
text, a reference image's content or its style (docs/methods/semantic.md).

The patch is a post-CFG function on ``model.clone()``: at the guided steps it decodes the post-CFG x0 through a
pack-owned decoder copy, scores views of it with CLIP, and moves x0 down the loss gradient (no UNet Jacobian).
The decoder copy, the CLIP placement and the targets live for one sampling run: an OUTER_SAMPLE wrapper builds
them before the run and releases them after it. Neither the decoder nor CLIP is ever stored in
``model_options`` (``clone()`` deep-copies it): the patch holds a :class:`SemanticGuidance` whose deep copy is
itself.
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
import torch.nn.functional as F
from comfy_api.latest import io

import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
import folder_paths

from ..guidance import checks, semantic
from .toolkit import gradients, host, log

CATEGORY = "guided_synthesis/semantic"
LOG = log.logger("semantic")
FOLDER = "clip_guidance"
DEFAULT_ARCHITECTURE = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
CLIP_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DOWNSCALED = "downscaled latent"
SEMANTIC_DECODERS = tuple(gradients.DECODERS) + (DOWNSCALED,)
WRAPPER_KEY = "guided_synthesis_semantic"
OPEN_CLIP = io.Custom("GS_OPEN_CLIP")


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


def _make_grad_safe(module: torch.nn.Module) -> None:
    """Parameters and buffers that a device move inside inference mode turned into inference tensors become
    normal (frozen) tensors again, so activations through them can be saved for backward."""
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is not None and param.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(param.detach().clone(), requires_grad=False)
            for name, buffer in list(sub._buffers.items()):
                if buffer is not None and buffer.is_inference():
                    sub._buffers[name] = buffer.detach().clone()


class OpenCLIP:
    """The GS_OPEN_CLIP value: a frozen open_clip model, its tokenizer and preprocessing config. Pack-owned,
    under ComfyUI's model management through its own ModelPatcher: a guided MODEL lists it as an additional
    model, so the sampler loads it together with the UNet (memory accounted for both), and ComfyUI offloads
    it when something else needs the room, as it does with its own models."""

    is_gs_open_clip = True

    def __init__(self, model: torch.nn.Module, tokenizer, name: str, dtype: torch.dtype):
        self.model, self.tokenizer, self.name, self.dtype = model, tokenizer, name, dtype
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

    @classmethod
    def wrap(cls, model: torch.nn.Module, name: str, precision: str = "auto", tokenizer=None) -> "OpenCLIP":
        """Freeze ``model`` (built outside inference mode) in the chosen precision; ``tokenizer`` None: open_clip's
        for ``name``."""
        dtype = _clip_dtype(precision, comfy.model_management.get_torch_device())
        with torch.inference_mode(False):
            model.requires_grad_(False)
            model.eval()
            model.to(dtype=dtype)
        return cls(model, tokenizer if tokenizer is not None else _open_clip().get_tokenizer(name), name, dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def load(self) -> None:
        """On the torch device (a no-op when the sampler loaded it with the UNet), with weights autograd can
        save for backward."""
        comfy.model_management.load_models_gpu([self.patcher])
        _make_grad_safe(self.model)

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
    with torch.inference_mode(False):
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
        path = _checkpoint_path(architecture, checkpoint)
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


def _checkpoint_path(architecture: str, checkpoint: str) -> str:
    files = folder_paths.get_filename_list(FOLDER)
    if not checkpoint or checkpoint not in files:
        what = f"{checkpoint!r} is not in" if checkpoint else "no file chosen from"
        raise ValueError(f"checkpoint: {what} {_folder_hint()}; put {_expected_file(architecture)} there "
                         f"(files found: {', '.join(files) or 'none'}), or switch download on")
    return folder_paths.get_full_path_or_raise(FOLDER, checkpoint)


class OpenCLIPLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GS_OpenCLIPLoader",
            display_name="OpenCLIP Loader",
            category=CATEGORY,
            description="Loads an open_clip model (image and text towers) for CLIP Semantic Guidance, from a local "
                        "file in models/clip_guidance; it downloads only when 'download' is switched on.",
            inputs=[
                io.Combo.Input("architecture", options=architectures(), default=DEFAULT_ARCHITECTURE,
                               tooltip="The open_clip architecture the checkpoint was saved from (ViT-B-32 is "
                                       "small and fast; larger towers cost more per guided step)."),
                io.Combo.Input("checkpoint", options=folder_paths.get_filename_list(FOLDER),
                               tooltip="open_clip weights in models/clip_guidance: safetensors, or an open_clip "
                                       ".bin/.pt read weights-only (never fully unpickled). Ignored when download "
                                       "is on."),
                io.Combo.Input("precision", options=list(CLIP_PRECISIONS), default="auto",
                               tooltip="CLIP's weights: auto (bf16 on GPUs that support it, else fp32), fp32, "
                                       "bf16, or fp16 (user-selected; may lose small gradients). Losses are fp32."),
                io.Boolean.Input("download", default=False,
                                 tooltip="Off (default): no network, the checkpoint file is used. On: fetch the "
                                         "'pretrained' weights from the Hugging Face Hub into models/clip_guidance "
                                         "(HF_HUB_OFFLINE is honoured)."),
                io.String.Input("pretrained", default=DEFAULT_PRETRAINED,
                                tooltip="The open_clip pretrained tag to download (only used when download is "
                                        "on), e.g. laion2b_s34b_b79k for ViT-B-32."),
            ],
            outputs=[OPEN_CLIP.Output(display_name="CLIP_MODEL",
                                      tooltip="The open_clip model, tokenizer and preprocessing for guidance.")],
        )

    @classmethod
    def execute(cls, architecture, checkpoint=None, precision="auto", download=False,
                pretrained=DEFAULT_PRETRAINED) -> io.NodeOutput:
        if not download:  # a missing file names the folder and the file it expects (before the list check)
            _checkpoint_path(architecture, checkpoint)
        return cls._load(architecture, checkpoint, precision, download, pretrained)

    @classmethod
    @host.validated
    def _load(cls, architecture, checkpoint, precision, download, pretrained) -> io.NodeOutput:
        return io.NodeOutput(load_open_clip(architecture, checkpoint, precision, download, pretrained))


# ----------------------------------------------------------------------------------------------
# The guidance patch


class _Run:
    """What one sampling run needs: the decoder copy, the gate, the targets; released after the run."""

    def __init__(self, levels: torch.Tensor, gate: set[int]):
        self.levels = levels.detach().float().cpu()
        self.gate = gate
        self.done: set[int] = set()
        self.decoder = None
        self.scaler: gradients.LossScaler | None = None
        self.flow = False
        self.warned_paper = False
        self.latent_format = None
        self.text = None
        self.content = None
        self.grams = None


class SemanticGuidance:
    """Post-CFG function (``fn(args) -> denoised``) and OUTER_SAMPLE wrapper of CLIP semantic guidance.

    Immutable settings plus the current run's state; its deep copy is itself, so it may sit in model_options.
    """

    def __init__(self, clip: OpenCLIP, vae, decoder: str, text: str, text_weight: float, image_weight: float,
                 image_loss: str, reference: torch.Tensor | None, mask: torch.Tensor | None, cutouts: int,
                 sigma_start: float, sigma_end: float, every: int, step_mode: str):
        self.clip, self.text, self.image_loss = clip, text, image_loss
        self.downscaled = decoder == DOWNSCALED
        self.spec = gradients.LossDecoderSpec(vae, "auto" if self.downscaled else decoder, "auto",
                                              method="CLIP Semantic Guidance",
                                              advice="Choose the 'taesd' or 'downscaled latent' decoder, or lower "
                                                     "the output size or batch.")
        self.text_weight = float(text_weight) if text else 0.0
        self.image_weight = float(image_weight) if reference is not None else 0.0
        self.reference, self.mask = reference, mask
        self.cutouts, self.every, self.step_mode = int(cutouts), int(every), step_mode
        self.sigma_start, self.sigma_end = sigma_start, sigma_end
        self.run: _Run | None = None
        self._depth = 0

    def __deepcopy__(self, memo):
        return self

    @property
    def active(self) -> bool:
        return self.text_weight != 0.0 or self.image_weight != 0.0

    @property
    def total_weight(self) -> float:
        return self.text_weight + self.image_weight

    @property
    def uses_content(self) -> bool:
        return self.image_weight != 0.0 and self.image_loss in ("content", "both")

    @property
    def uses_style(self) -> bool:
        return self.image_weight != 0.0 and self.image_loss in ("style", "both")

    # --- run lifetime -------------------------------------------------------------------------

    def outer_sample(self, executor, *args, **kwargs):
        """OUTER_SAMPLE wrapper: build the run's state before sampling, release it afterwards."""
        noise, sigmas = args[0], args[3]
        guider = executor.class_obj
        self._depth += 1
        try:
            if self._depth == 1:
                base = guider.model_patcher.model
                self.begin(base.latent_format, tuple(noise.shape), sigmas, _is_flow(base))
            return executor(*args, **kwargs)
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.end()

    def begin(self, latent_format, shape: tuple, sigmas: torch.Tensor, flow: bool = False) -> None:
        """Build the run's state for latents of ``shape``; ``flow``: the model is a flow (CONST) model."""
        host.check_image_latent(shape, "CLIP Semantic Guidance")
        self.end()
        run = _Run(sigmas, semantic.gated_indices(sigmas, self.sigma_start, self.sigma_end, self.every))
        run.flow = bool(flow)
        self.run = run
        if not self.active or not run.gate:
            return
        batch, latent_hw = shape[0], tuple(shape[-2:])
        if self.mask is not None:
            checks.check_mask_batch(self.mask.shape[0], batch, "mask")
        if self.reference is not None and self.reference.shape[0] not in (1, batch):
            raise ValueError(f"reference_image has a batch of {self.reference.shape[0]}; expected 1 or {batch} "
                             f"(the latent batch)")
        if self.downscaled:
            latent_hw = tuple(max(1, v // 2) for v in latent_hw)
        run.latent_format = latent_format
        run.decoder = self.spec.build(latent_format, batch, latent_hw)
        reduced = run.decoder.reduced_precision or self.clip.dtype != torch.float32
        elements = 1
        for size in shape[1:]:
            elements *= int(size)
        run.scaler = gradients.LossScaler(semantic.clip_loss_scale(reduced, elements, self.total_weight),
                                          self.spec.method, reduced)
        self.clip.load()
        self._targets(run)

    def end(self) -> None:
        run, self.run = self.run, None
        if run is not None and run.decoder is not None:
            run.decoder.close()
            run.decoder = None

    def _targets(self, run: _Run) -> None:
        """Text embedding, clean reference embeddings and reference Grams, once per run."""
        clip = self.clip
        if self.text_weight:
            run.text = clip.encode_text(self.text)
        if self.reference is not None and self.image_weight:
            with gradients.grad_enabled(), torch.no_grad():
                pixels = gradients.owned(self.reference).movedim(-1, 1).float().to(clip.device)
                embedding, features = clip.features(clip.views(pixels, 0, None), self.uses_style)
                run.content = embedding
                run.grams = [semantic.gram(f) for f in features]

    # --- the post-CFG function ----------------------------------------------------------------

    def __call__(self, args: dict) -> torch.Tensor:
        denoised = args["denoised"]
        if not self.active:
            return denoised
        levels = args["model_options"].get("transformer_options", {}).get("sample_sigmas")
        if levels is None:
            return denoised
        sigma = args["sigma"]
        run = self.run
        if run is None or run.levels.shape != levels.shape or not torch.allclose(run.levels, levels.float().cpu()):
            # called outside a guider's run (no OUTER_SAMPLE): begin one here; the next begin releases it
            self.begin(args["model"].latent_format, tuple(denoised.shape), levels, _is_flow(args["model"]))
            run = self.run
        index = semantic.sigma_step_index(float(sigma.reshape(-1)[0]), run.levels)
        if index is None or index not in run.gate or index in run.done:
            return denoised  # outside the window, a skipped step, or a later evaluation of a guided step
        run.done.add(index)
        host.check_interrupt()
        if self.step_mode == "paper" and run.flow and float(sigma.max()) >= 1.0:
            if not run.warned_paper:
                run.warned_paper = True
                LOG.warning("CLIP Semantic Guidance: the paper step is undefined at sigma 1 on a flow model (pure "
                            "noise: sigma/(1-sigma) is infinite); that step is left unguided. Start the window "
                            "later (start_percent) or use the normalised step.")
            return denoised
        grad = self.gradient(run, denoised, index)
        if grad is None:
            return denoised  # the gradient stayed non-finite: the scaler skipped the step (warned once)
        weight = self.total_weight if self.step_mode == "normalised" else 1.0
        uncond = args.get("uncond_denoised")
        weights = None
        if self.mask is not None and self.step_mode == "normalised":
            weights = semantic.mask_weights(gradients.owned(self.mask).float().unsqueeze(1), grad.shape[-2:])
            weights = weights.to(denoised.device)
        return semantic.guided_x0(denoised, grad.to(denoised.device), weight, sigma.to(denoised.device),
                                  self.step_mode, args.get("cond_denoised"), uncond, noisy=args.get("input"),
                                  flow=run.flow, weights=weights)

    def gradient(self, run: _Run, denoised: torch.Tensor, index: int) -> torch.Tensor | None:
        """dL/dx0 of the weighted CLIP loss of the decoded x0 (through the decoder copy only), summed over the
        batch; zero on latent cells outside the mask. None when it stays non-finite (run.scaler: dynamic loss
        scaling, an fp32 decoder pass, then a skip). Checks for an interrupt before the decode, before CLIP and
        before the backward."""
        clip = self.clip
        batch = denoised.shape[0]
        decoder = run.decoder
        with gradients.grad_enabled():
            x0 = gradients.owned(denoised).float().requires_grad_(True)
            mask = None if self.mask is None else gradients.owned(self.mask).float().unsqueeze(1)

            def loss_fn() -> torch.Tensor:
                host.check_interrupt()
                latent = F.avg_pool2d(x0, 2) if self.downscaled else x0
                image = decoder.decode_model_space(latent, run.latent_format, clamp=True)
                if mask is not None:
                    image = semantic.masked_for_loss(image, F.interpolate(
                        mask.to(image.device), size=image.shape[-2:], mode="bilinear", align_corners=False))
                generator = torch.Generator().manual_seed(1_000_003 * (index + 1))
                views = clip.views(image, self.cutouts, generator)
                count = views.shape[0] // batch
                host.check_interrupt()
                embeddings, features = clip.features(views, self.uses_style)
                content = semantic.repeat_views(run.content, count, batch) if self.uses_content else None
                text_weight = self.text_weight if run.text is not None else 0.0
                loss = semantic.text_image_loss(embeddings, run.text, content, batch, text_weight,
                                                self.image_weight)
                if self.uses_style:
                    grams = [semantic.repeat_views(g, count, batch) for g in run.grams]
                    loss = loss + self.image_weight * semantic.view_mean(
                        semantic.style_loss(features, grams, relative=True), batch)
                host.check_interrupt()
                return loss.sum()

            full = decoder.full_precision if decoder.reduced_precision else None
            grads = run.scaler.gradient(loss_fn, [x0], full, what="CLIP-guided step")
            if grads is None:
                return None
            grad = grads[0]
            if mask is not None:
                grad = grad * semantic.latent_mask(mask.to(grad.device), grad.shape[-2:])
        return grad.detach()


def _is_flow(base_model) -> bool:
    """Whether a BaseModel samples as a flow model (ComfyUI's CONST: x = (1 - sigma) x0 + sigma noise)."""
    return isinstance(getattr(base_model, "model_sampling", None), comfy.model_sampling.CONST)


def _percent_sigma(model, percent: float) -> float:
    return float(model.get_model_object("model_sampling").percent_to_sigma(float(percent)))


class CLIPSemanticGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GS_CLIPSemanticGuidance",
            display_name="CLIP Semantic Guidance",
            category=CATEGORY,
            description="Steers any sampler towards a text, a reference image's content or its style with CLIP "
                        "(after SDG, Liu et al. WACV 2023): at the guided steps the post-CFG x0 is decoded, scored "
                        "with CLIP and moved down the loss gradient. Outputs a patched MODEL.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model; it is cloned, never changed. Other patches on "
                                                "it keep working."),
                io.Vae.Input("vae", tooltip="The model's VAE; the loss decodes x0 through a pack-owned copy of its "
                                            "decoder (or TAESD)."),
                OPEN_CLIP.Input("clip_model", tooltip="An open_clip model from OpenCLIP Loader."),
                io.String.Input("text", multiline=True, default="",
                                tooltip="Text to steer towards (CLIP's spherical distance to its embedding). Empty: "
                                        "no text guidance."),
                io.Float.Input("text_weight", default=0.3, min=0.0, max=100.0, step=0.01,
                               tooltip="Strength of the text guidance (loss: theta^2/2, theta the angle between "
                                       "the CLIP embeddings of the decoded x0 and the text). normalised step: the "
                                       "step's size as a fraction of the CFG correction's (0.1-1). paper step: the "
                                       "loss's factor in x0 - sigma_ve^2 * dL/dx0. SDG's weights (160) do not carry "
                                       "over: another loss, and x0 in latent space through the VAE instead of "
                                       "SDG's pixel x_t (README: what the weights mean)."),
                io.Float.Input("image_weight", default=0.3, min=0.0, max=100.0, step=0.01,
                               tooltip="Strength of the reference-image guidance, in text_weight's units "
                                       "(content: theta^2/2 to the reference's embedding; style: the relative Gram "
                                       "loss, about 1 for unrelated images). Ignored without a reference_image. "
                                       "SDG's weights (100) do not carry over; its style loss is 1e10 x a Gram MSE."),
                io.Combo.Input("image_loss", options=list(semantic.IMAGE_LOSSES), default="content",
                               tooltip="content: the reference's CLIP embedding; style: Gram matrices of "
                                       "early/middle CLIP layers (per image), each layer's error relative to the "
                                       "reference Gram's size, so every layer counts equally (SDG weights layers "
                                       "by their Gram's size); both: their sum."),
                io.Int.Input("cutouts", default=4, min=0, max=64,
                             tooltip="Random square crops CLIP scores per guided step (steadier guidance, costs "
                                     "CLIP passes). 0: one resize of the whole image."),
                io.Float.Input("start_percent", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="Guidance starts at this point of the model's noise schedule (0 = pure "
                                       "noise), as ControlNet's start_percent."),
                io.Float.Input("end_percent", default=0.7, min=0.0, max=1.0, step=0.01,
                               tooltip="Guidance ends at this point of the noise schedule (1 = clean)."),
                io.Int.Input("every", default=1, min=1, max=100,
                             tooltip="Guide every k-th sampler step inside the window (steps are counted by the "
                                     "sampler's sigmas, so Heun-type samplers guide once per step)."),
                io.Combo.Input("decoder", options=list(SEMANTIC_DECODERS), default="auto",
                               tooltip="How x0 is decoded for the loss: the VAE's decoder in its own (auto) or a "
                                       "chosen precision (fp16 user-selected), taesd (fast approximate decoder "
                                       "from models/vae_approx), or 'downscaled latent' (the VAE on a 2x pooled "
                                       "latent: about 4x cheaper). Below fp32 the loss is scaled so its gradient "
                                       "does not underflow, lowered when it overflows; a step whose gradient stays "
                                       "non-finite is skipped with a warning."),
                io.Combo.Input("step_mode", options=list(semantic.STEP_MODES), default="normalised",
                               tooltip="normalised: the step has weight x the CFG correction's size, at every "
                                       "noise level (with a mask: both sizes measured over the mask's cells). "
                                       "paper: SDG's unnormalised step x0 - sigma_ve^2 * dL/dx0, sigma_ve = sigma "
                                       "(flow models: sigma / (1 - sigma); no step at sigma 1)."),
                io.Image.Input("reference_image", optional=True,
                               tooltip="The image whose content or style to follow (batch 1, or one per "
                                       "generated image)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Only this region is guided: the loss moves only its pixels, the gradient "
                                      "is zero on latent cells outside it, and the normalised step's size is "
                                      "measured over the mask's cells, so it does not grow as the mask shrinks "
                                      "(batch 1 or per image)."),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The model with CLIP semantic guidance; use it "
                                                                   "with any sampler.")],
        )

    @classmethod
    @host.validated
    def execute(cls, model, vae, clip_model, text, text_weight, image_weight, image_loss, cutouts, start_percent,
                end_percent, every, decoder, step_mode, reference_image=None, mask=None) -> io.NodeOutput:
        if not getattr(clip_model, "is_gs_open_clip", False):  # duck-typed: the class may be loaded twice
            raise ValueError("clip_model: connect an OpenCLIP Loader")
        if start_percent > end_percent:
            raise ValueError(f"start_percent ({start_percent}) must not be larger than end_percent ({end_percent})")
        if text_weight < 0 or image_weight < 0:
            raise ValueError("text_weight and image_weight must not be negative")
        reference = None
        if reference_image is not None:
            reference = host.image_to_rgb(reference_image, "reference_image")
        if mask is not None:
            mask = host.mask_to_batch(mask, "mask")
            if not torch.isfinite(mask).all():
                raise ValueError("mask: it has non-finite values")
        guidance = SemanticGuidance(clip_model, vae, decoder, (text or "").strip(), text_weight, image_weight,
                                    image_loss, reference, mask, cutouts, _percent_sigma(model, start_percent),
                                    _percent_sigma(model, end_percent), every, step_mode)
        patched = model.clone()
        if not guidance.active:
            LOG.info("CLIP Semantic Guidance: nothing to guide (no text, no reference image or zero weights); the "
                     "model is unchanged")
            return io.NodeOutput(patched)
        patched.set_model_sampler_post_cfg_function(guidance)
        patched.set_additional_models(WRAPPER_KEY, [clip_model.patcher])
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY,
                                     guidance.outer_sample)
        return io.NodeOutput(patched)


