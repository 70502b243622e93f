"""The gradient recipe (docs/host.md section 4), implemented once for every method.

ComfyUI runs nodes under ``torch.inference_mode()``: upstream weights, latents and conds are
inference tensors, and autograd refuses to save them for backward. This module is the only
place that works around it, through official extension points only:

* :func:`grad_enabled` leaves inference mode and enables grad;
* :func:`owned` gives a normal copy of an upstream tensor (never ``requires_grad_`` upstream);
* :func:`differentiable_model` clones a MODEL and adds identity weight wrappers, so
  ``comfy.ops`` copies each weight per forward in the current (grad-capable) mode;
* :class:`DifferentiableDecoder` is a pack-owned copy of the VAE decoder; the shared VAE
  and ``VAE.decode`` (clamped, inference-only) are never touched. Optionally its blocks run
  under activation checkpointing (:func:`checkpoint_blocks`): same gradients, a fraction of the memory.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from typing import Callable, Iterator

import torch
import torch.utils.checkpoint

import comfy.model_management
import comfy.taesd.taesd
import folder_paths

_log = logging.getLogger(__name__)

# Submodules of a VAE's first_stage_model that decoding never uses; not copied.
_ENCODER_PARTS = ("encoder", "taesd_encoder", "quant_conv")


@contextlib.contextmanager
def grad_enabled() -> Iterator[None]:
    """Leave ComfyUI's inference mode and enable autograd for the block."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def owned(tensor: torch.Tensor) -> torch.Tensor:
    """A normal (non-inference), detached copy of an upstream tensor."""
    with torch.inference_mode(False):
        return tensor.detach().clone()


def _identity_weight(weight: torch.Tensor) -> torch.Tensor:
    # Module-level so ModelPatcher.clone() shares it by reference; its presence alone makes
    # comfy.ops.cast_bias_weight copy the weight (cast_to(copy=True)) in the current mode.
    return weight


def unet_weight_keys(model_patcher) -> list[str]:
    """Keys of every weight/bias of the diffusion model's comfy.ops layers."""
    keys = []
    for name, module in model_patcher.model.named_modules():
        if not name.startswith("diffusion_model") or not hasattr(module, "comfy_cast_weights"):
            continue
        for param in ("weight", "bias"):
            if getattr(module, param, None) is not None:
                keys.append(f"{name}.{param}")
    return keys


def differentiable_model(model_patcher):
    """A clone of MODEL through whose UNet autograd flows (inside :func:`grad_enabled`).

    Cost: one transient weight copy per layer per forward, and one reload of the clone.
    The shared model is not modified.
    """
    patched = model_patcher.clone()
    for key in unet_weight_keys(patched):
        patched.add_weight_wrapper(key, _identity_weight)
    return patched


def probe_gradient(fn: Callable[[], torch.Tensor]) -> str | None:
    """Run a tiny forward/backward; return None if gradients flow, else the reason.

    Methods call this before their gradient path and fall back (with a warning) when an
    attention backend or weight format has no backward.
    """
    try:
        with grad_enabled():
            out = fn()
            if not out.requires_grad:
                return "the output does not require grad"
            out.float().sum().backward()
    except RuntimeError as error:
        return str(error).splitlines()[0]
    return None


# Decoder blocks recomputed in backward when checkpointing (AutoencoderKL-style decoders of SD1/SD2/SDXL/
# SD3/Flux: comfy.ldm.modules.diffusionmodules.model; TAESD: comfy.taesd.taesd.Block).
CHECKPOINTED_BLOCKS = ("ResnetBlock", "AttnBlock", "Upsample", "Block")


class _Checkpointed(torch.nn.Module):
    """Runs ``block`` keeping only its inputs for backward; backward recomputes it (exact)."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self.block(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(self.block, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(module: torch.nn.Module) -> int:
    """Wrap every decoder block of a pack-owned ``module`` in activation checkpointing; returns how many.

    Saved activations drop to the blocks' inputs plus one block's internals during backward, for
    about one extra decoder forward per backward.
    """
    count = 0
    for parent in list(module.modules()):
        if isinstance(parent, _Checkpointed):
            continue
        for name, child in list(parent.named_children()):
            if type(child).__name__ in CHECKPOINTED_BLOCKS:
                setattr(parent, name, _Checkpointed(child))
                count += 1
    return count


class _OwnedDecoder:
    """A pack-owned, frozen decoder module on the VAE device; ``_decode`` gives [0, 1] images with autograd."""

    module: torch.nn.Module | None

    def _own(self, module: torch.nn.Module) -> None:
        """Freeze ``module`` (built inside inference_mode(False)) and move it to ``self.device``/``self.dtype``."""
        with torch.inference_mode(False):
            module.requires_grad_(False)
            module.eval()
            module.to(device=self.device, dtype=self.dtype)
        self.module = module

    def _decode(self, latent: torch.Tensor, clamp: bool) -> torch.Tensor:
        if self.module is None:
            raise RuntimeError(f"{type(self).__name__} was closed")
        image = self.module.decode(latent.to(device=self.device, dtype=self.dtype)).float()
        image = (image + 1.0) * 0.5
        return image.clamp(0.0, 1.0) if clamp else image

    def close(self) -> None:
        self.module = None
        comfy.model_management.soft_empty_cache()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DifferentiableDecoder(_OwnedDecoder):
    """A pack-owned, grad-capable copy of a VAE's decoder.

    ``decode(z_raw)`` maps a raw VAE latent (what LATENT dicts hold) to an image in about
    [0, 1], laid out ``[B, 3, H, W]``, with autograd. Works for AutoencoderKL and for
    TAESD-type VAEs (both expose ``first_stage_model.decode`` returning [-1, 1]).
    Use as a context manager (or call :meth:`close`) to release the copy.
    """

    def __init__(self, vae, dtype: torch.dtype | None = None, checkpointed: bool = False):
        comfy.model_management.load_models_gpu([vae.patcher])
        source = vae.first_stage_model
        skip = {id(getattr(source, part)): None for part in _ENCODER_PARTS
                if isinstance(getattr(source, part, None), torch.nn.Module)}
        self.dtype = dtype or vae.vae_dtype
        self.device = vae.device
        with torch.inference_mode(False):
            module = copy.deepcopy(source, memo=skip)
            self.checkpointed_blocks = checkpoint_blocks(module) if checkpointed else 0
            self._own(module)
        self.downscale_ratio = vae.downscale_ratio

    def decode(self, z_raw: torch.Tensor, clamp: bool = False) -> torch.Tensor:
        return self._decode(z_raw, clamp)

    def decode_model_space(self, x0: torch.Tensor, latent_format, clamp: bool = False) -> torch.Tensor:
        """Decode a sampler-space x0 (``process_latent_in`` applied) with the model's latent scaling."""
        return self._decode(latent_format.process_out(x0), clamp)


class TAESDDecoder(_OwnedDecoder):
    """A pack-owned, grad-capable TAESD decoder loaded from ComfyUI's ``models/vae_approx``.

    Same interface as :class:`DifferentiableDecoder`; TAESD takes model-space latents (the
    previewer's convention), so ``decode_model_space`` needs no unscaling. About 20x cheaper
    than the SD VAE decoder; an approximation of it.
    """

    def __init__(self, latent_format, dtype: torch.dtype | None = None, checkpointed: bool = False):
        name = getattr(latent_format, "taesd_decoder_name", None)
        if not name:
            raise ValueError("decoder 'taesd': this model's latent format has no TAESD decoder; choose another decoder")
        files = [f for f in folder_paths.get_filename_list("vae_approx") if f.startswith(name)]
        if not files:
            raise ValueError(f"decoder 'taesd' needs {name}.safetensors (or .pth) in models/vae_approx; "
                             f"download it from the TAESD project or choose another decoder")
        self.path = folder_paths.get_full_path_or_raise("vae_approx", files[0])
        self.device = comfy.model_management.vae_device()
        self.dtype = dtype or torch.float32
        with torch.inference_mode(False):
            try:
                module = comfy.taesd.taesd.TAESD(None, self.path, latent_channels=latent_format.latent_channels)
            except Exception as error:  # a junk or truncated file: name it inside models/, not by server path
                raise ValueError(f"decoder 'taesd': models/vae_approx/{files[0]} is not a readable TAESD decoder "
                                 f"({type(error).__name__}); replace it with the TAESD project's {name} file or "
                                 f"choose another decoder") from None
            module.taesd_encoder = None
            self.checkpointed_blocks = checkpoint_blocks(module) if checkpointed else 0
            self._own(module)

    def decode_model_space(self, x0: torch.Tensor, latent_format=None, clamp: bool = False) -> torch.Tensor:
        return self._decode(x0, clamp)
