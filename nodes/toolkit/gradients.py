"""The gradient toolkit (docs/host.md section 4): how any method gets gradients inside ComfyUI.

ComfyUI runs nodes under ``torch.inference_mode()``: upstream weights, latents and conds are
inference tensors, and autograd refuses to save them for backward. This module is the only
place that works around it, through official extension points only:

* :func:`grad_enabled` leaves inference mode and enables grad;
* :func:`owned` gives a normal copy of an upstream tensor (never ``requires_grad_`` upstream);
* :func:`differentiable_model` clones a MODEL and adds identity weight wrappers, so
  ``comfy.ops`` copies each weight per forward in the current (grad-capable) mode;
* :class:`DifferentiableDenoiser`: inside a KSAMPLER function, the sampler's CFG'd x0 with autograd
  through the UNet (:func:`probe_gradient` first; without a backward, the identity Jacobian, logged);
* :class:`DifferentiableDecoder` is a pack-owned copy of the VAE decoder; the shared VAE
  and ``VAE.decode`` (clamped, inference-only) are never touched. Optionally its blocks run
  under activation checkpointing (:func:`checkpoint_blocks`): same gradients, a fraction of the memory;
* :class:`LossDecoderSpec` / :func:`make_loss_decoder`: the decoder a loss decodes through, chosen by
  plain values (precision, memory), with its memory check and loss scale;
* :class:`LossScaler`: dynamic loss scaling with back-off for every gradient through a loss decoder; a
  gradient that stays non-finite is retried in fp32 or the step is skipped with one warning per run, so no
  NaN/inf reaches a latent and no reduced-precision step vanishes silently.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator

import torch
import torch.utils.checkpoint

import comfy.model_management
import comfy.taesd.taesd

from ...guidance.loss_scale import default_loss_scale
from . import guard, model_files
from .log import logger

LOG = logger("gradients")

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


@contextlib.contextmanager
def inference_mode_off() -> Iterator[None]:
    """Leave ComfyUI's inference mode for the block (tensors made in it are normal tensors), e.g. to build a
    pack-owned module whose weights autograd may later save for backward."""
    with torch.inference_mode(False):
        yield


def make_grad_safe(module: torch.nn.Module) -> None:
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


def freeze(module: torch.nn.Module, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Freeze a pack-owned ``module`` (built outside inference mode) for backward through it: no parameter
    needs grad, eval mode, moved to ``device``/``dtype`` where given (outside inference mode, so the moved
    weights stay normal tensors). Returns ``module``."""
    with torch.inference_mode(False):
        module.requires_grad_(False)
        module.eval()
        if device is not None or dtype is not None:
            module.to(device=device, dtype=dtype)
    return module


class OwnedModule:
    """A pack-owned, frozen copy of a module a loss backpropagates through (a decoder, CLIP, LPIPS): the one
    way the pack owns such a copy. :meth:`own` freezes and places it (:func:`freeze`); :meth:`close` (or
    leaving a ``with`` block) releases it. Upstream modules are never frozen or moved: only copies the pack
    built are owned."""

    module: torch.nn.Module | None = None

    def own(self, module: torch.nn.Module, device: torch.device | str | None = None,
            dtype: torch.dtype | None = None) -> torch.nn.Module:
        self.module = freeze(module, device, dtype)
        return self.module

    def close(self) -> None:
        self.module = None
        comfy.model_management.soft_empty_cache()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _identity_weight(weight: torch.Tensor) -> torch.Tensor:
    # Module-level so ModelPatcher.clone() shares it by reference; its presence alone makes
    # comfy.ops.cast_bias_weight copy the weight (cast_to(copy=True)) in the current mode. The copy is
    # cut from the shared parameter's graph: inputs get gradients, the shared weights never get a .grad.
    return weight.detach()


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
    keys = unet_weight_keys(patched)
    for key in keys:
        patched.add_weight_wrapper(key, _identity_weight)
    # tensors the forward uses without a comfy.ops cast (Flux's QK RMSNorm scales, ...): a model built inside
    # ComfyUI's inference mode holds them as inference tensors, which autograd refuses to save; the clone uses
    # normal copies (object patches, undone when the clone is unloaded)
    covered = set(keys)
    for name, tensor in [*patched.model.named_parameters(), *patched.model.named_buffers()]:
        if name.startswith("diffusion_model.") and name not in covered and tensor.is_inference():
            with torch.inference_mode(False):
                copy_ = tensor.detach().clone()
            if isinstance(tensor, torch.nn.Parameter):
                copy_ = torch.nn.Parameter(copy_, requires_grad=False)
            patched.add_object_patch(name, copy_)
    return patched


@contextlib.contextmanager
def saved_copies() -> Iterator[None]:
    """Autograd keeps its own copy of every tensor it saves for backward in the block (a saved-tensor hook, for
    this block only). Models whose forward adds residuals in place (ComfyUI's Flux / Chroma blocks: ``x += ...``
    after a LayerNorm saved ``x``), or saves a conditioning tensor made in inference mode, then differentiate;
    the values are the same, the saved activations take more memory."""
    with torch.autograd.graph.saved_tensors_hooks(lambda tensor: tensor.clone(), lambda tensor: tensor):
        yield


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


class DifferentiableDenoiser:
    """The sampler's CFG'd x0 ("denoised") with autograd through the UNet, inside a KSAMPLER function.

    ``model`` and ``extra_args`` are what the sampler function received: ``model(x, sigma, **extra_args)``
    is the guider's post-CFG x0 (``model.inner_model`` the CFGGuider, its ``model_patcher`` the MODEL), so
    LoRAs, ControlNets, attention patches, wrappers, post-CFG hooks and inpaint masks apply as in the sampler.
    On the first call a differentiable clone of the guider's MODEL (:func:`differentiable_model`) is loaded
    in its place (one reload) and :func:`probe_gradient` runs that call's forward and backward once. If that
    fails, the denoiser logs a warning and falls back to mode ``"identity"``: x0 computed without autograd,
    its gradient taken as ``d x0 / d x = I``. ``mode`` (``"unet"`` / ``"identity"``) and ``fallback_reason``
    report what is active. :meth:`close` (or leaving a ``with`` block) reloads the MODEL as it was.
    """

    UNET = "unet"
    IDENTITY = "identity"

    def __init__(self, model, extra_args: dict, method: str = "gradient"):
        self.model = model
        self.patcher = model.inner_model.model_patcher
        self.method = method
        self.mode: str | None = None
        self.fallback_reason: str | None = None
        self._patched = None
        self._copy_saved = False  # saved_copies() around the forward (models that modify saved tensors in place)
        self._args = dict(extra_args)
        mask = self._args.get("denoise_mask")
        if mask is not None:  # KSamplerX0Inpaint multiplies x by it: an inference tensor cannot be saved
            self._args["denoise_mask"] = owned(mask)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, args: dict | None = None) -> torch.Tensor:
        """x0 for a sampler-space ``x`` [B, ...] at ``sigma`` (a number or one per item); ``x`` may require grad.
        ``args`` replaces the extra_args for this call (a method that calls the model on crops passes the
        cropped ``denoise_mask``)."""
        with grad_enabled():
            sigma = owned(torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0]))
            if args is None:
                args = self._args
            else:
                args = dict(args)
                if args.get("denoise_mask") is not None:
                    args["denoise_mask"] = owned(args["denoise_mask"])
            if self.mode is None:
                self._start(x, sigma, args)
            if self.mode == self.UNET:
                if self._copy_saved:
                    with saved_copies():
                        return self.model(x, sigma, **args)
                return self.model(x, sigma, **args)
            with torch.no_grad():
                x0 = self.model(x.detach(), sigma, **args)
            return x0 + (x - x.detach())  # the value x0 exactly; gradient the identity

    def _start(self, x: torch.Tensor, sigma: torch.Tensor, args: dict | None = None) -> None:
        args = self._args if args is None else args
        self._patched = differentiable_model(self.patcher)
        comfy.model_management.load_models_gpu([self._patched])
        probe_x = owned(x).requires_grad_(True)  # the whole batch: inpaint masks and conds are per batch
        reason = probe_gradient(lambda: self.model(probe_x, sigma, **args))
        if reason is not None:  # e.g. Flux's in-place residual adds: again with autograd's own copies
            def copied():
                with saved_copies():
                    return self.model(probe_x, sigma, **args)
            if probe_gradient(copied) is None:
                self._copy_saved = True
                LOG.info("%s: this model modifies tensors autograd saved (%s); gradients flow through it with "
                         "autograd's own copies of them (more memory)", self.method, reason)
                reason = None
        if reason is None:
            self.mode = self.UNET
            LOG.info("%s: gradients flow through the UNet (differentiable denoiser)", self.method)
            return
        self.close()
        self.mode, self.fallback_reason = self.IDENTITY, reason
        LOG.warning("%s: no gradient through this model's UNet (%s); using the identity Jacobian d x0/d x = I "
                     "instead (approximate)", self.method, reason)

    def close(self) -> None:
        """Reload the guider's MODEL as it was (no weight wrappers); call the denoiser no more after this."""
        if self._patched is not None:
            self._patched = None
            comfy.model_management.load_models_gpu([self.patcher])

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def use_identity(self) -> None:
        """Take ``d x0 / d x = I`` from the first call on (an approximation the caller chose): no differentiable
        clone is loaded and no UNet backward runs; :attr:`mode` reads ``"identity"``."""
        self.mode = self.IDENTITY


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


class _OwnedDecoder(OwnedModule):
    """A pack-owned, frozen decoder module on the VAE device; ``_decode`` gives [0, 1] images with autograd."""

    def _own(self, module: torch.nn.Module) -> None:
        """Freeze ``module`` (built inside inference_mode(False)) and move it to ``self.device``/``self.dtype``."""
        self.own(module, self.device, self.dtype)

    def _decode(self, latent: torch.Tensor, clamp: bool) -> torch.Tensor:
        if self.module is None:
            raise RuntimeError(f"{type(self).__name__} was closed")
        image = self.module.decode(latent.to(device=self.device, dtype=self.dtype)).float()
        image = (image + 1.0) * 0.5
        return image.clamp(0.0, 1.0) if clamp else image

    @property
    def reduced_precision(self) -> bool:
        return self.dtype != torch.float32

    @contextlib.contextmanager
    def full_precision(self) -> Iterator[None]:
        """The copy runs in fp32 inside the block (a loss scaler's last resort), then back in its own dtype.
        Pack-owned, so converting it in place is allowed; fp16/bf16 -> fp32 -> fp16/bf16 is exact."""
        if self.module is None:
            raise RuntimeError(f"{type(self).__name__} was closed")
        dtype = self.dtype
        with torch.inference_mode(False):
            self.module.to(dtype=torch.float32)
        self.dtype = torch.float32
        try:
            yield
        finally:
            self.dtype = dtype
            if self.module is not None:
                with torch.inference_mode(False):
                    self.module.to(dtype=dtype)


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
        shown, self.path = model_files.find_entry(
            "vae_approx", "decoder", f"{name}.safetensors (or .pth)", lambda file: file.startswith(name),
            missing=f"decoder 'taesd' needs {name}.safetensors (or .pth) in models/vae_approx; download it from "
                    f"the TAESD project or choose another decoder")
        self.device = comfy.model_management.vae_device()
        self.dtype = dtype or torch.float32
        with torch.inference_mode(False):
            try:
                module = comfy.taesd.taesd.TAESD(None, self.path, latent_channels=latent_format.latent_channels)
            except Exception as error:  # a junk or truncated file: name it inside models/, not by server path
                raise ValueError(f"decoder 'taesd': models/vae_approx/{shown} is not a readable TAESD decoder "
                                 f"({type(error).__name__}); replace it with the TAESD project's {name} file or "
                                 f"choose another decoder") from None
            module.taesd_encoder = None
            self.checkpointed_blocks = checkpoint_blocks(module) if checkpointed else 0
            self._own(module)

    def decode_model_space(self, x0: torch.Tensor, latent_format=None, clamp: bool = False) -> torch.Tensor:
        return self._decode(x0, clamp)


# --- the decoder a loss decodes through ------------------------------------------------------

def decode_for_loss(decoder, x0: torch.Tensor, latent_format, pooled: bool = False,
                    clamp: bool = True) -> torch.Tensor:
    """A sampler-space latent decoded for a loss through a pack-owned decoder copy, with autograd. ``pooled``:
    the decoder runs on the 2x average-pooled latent, about a quarter of its work and half the image size per
    side (an approximation; GradOP+'s loss_resolution 'half', CLIP guidance's 'downscaled latent')."""
    latent = torch.nn.functional.avg_pool2d(x0, 2) if pooled else x0
    return decoder.decode_model_space(latent, latent_format, clamp=clamp)


# decoder precision choice -> dtype of the pack-owned decoder copy (None: the VAE's own dtype)
DECODERS = {
    "auto": None,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,  # user-selected only; loss scaling keeps its gradient from underflowing
    "taesd": None,
}
# "checkpointed": the decoder copy keeps only its blocks' inputs for backward and recomputes each block
# then (same result, about a third of the memory, about one more decoder forward per backward);
# "auto" checkpoints when the estimated activations exceed half of the free memory on the VAE device.
DECODER_MEMORY = ("auto", "full", "checkpointed")
# Extra peak bytes per output pixel of one optimisation step through an SD-family KL decoder in fp32
# (make bench, measured op by op: 1.39 GiB at 256x256, 5.63 GiB at 512x512); half for 16-bit decoders.
KL_DECODER_BYTES_PER_PIXEL = 23_000
# The same, checkpointed (measured: 0.44-0.47 GiB at 256x256, 1.75 GiB at 512x512 in fp32).
KL_DECODER_CHECKPOINTED_BYTES_PER_PIXEL = 7_200
TAESD_DOWNSCALE = 8
FIT_ADVICE = "Lower the output size or the batch."  # what the fit error suggests unless a method says better


def check_decoder_choice(precision: str, memory: str) -> None:
    """Errors naming the inputs ``decoder`` / ``decoder_memory`` for an unknown choice."""
    if precision not in DECODERS:
        raise ValueError(f"decoder must be one of {tuple(DECODERS)}, got {precision!r}")
    if memory not in DECODER_MEMORY:
        raise ValueError(f"decoder_memory must be one of {DECODER_MEMORY}, got {memory!r}")


def downscale_ratio(vae, precision: str) -> int:
    """Pixels per latent cell along each side of the decoder: the VAE's own ratio (8 for TAESD or when absent)."""
    if precision == "taesd":
        return TAESD_DOWNSCALE
    ratio = getattr(vae, "downscale_ratio", TAESD_DOWNSCALE)
    if not isinstance(ratio, int):
        raise ValueError(f"this VAE's downscale ratio ({ratio!r}) is not one integer (a video VAE?); the loss "
                         f"decoder needs an image VAE")
    return ratio


def decoder_fit(batch: int, height: int, width: int, bits: int, free_bytes: float, ratio: int, method: str,
                advice: str) -> None:
    """Stop before sampling when even the checkpointed decoder cannot fit: the error gives the estimate and the
    largest output (same aspect ratio, multiples of ``ratio``) that fits. ``height``/``width`` are the decoded
    image's pixels; ``method`` names the method and ``advice`` says what to change."""
    per_pixel = KL_DECODER_CHECKPOINTED_BYTES_PER_PIXEL * bits / 32
    needed = per_pixel * batch * height * width
    if needed <= free_bytes:
        return
    scale = (free_bytes / needed) ** 0.5
    fit_w, fit_h = int(width * scale) // ratio * ratio, int(height * scale) // ratio * ratio
    largest = (f"about {fit_w}x{fit_h} pixels" if fit_w >= ratio and fit_h >= ratio
               else "none at this batch size")
    raise ValueError(
        f"{method}: an output of {width}x{height} pixels (batch {batch}) needs about {needed / 2 ** 30:.1f} GiB for the "
        f"optimisation's decoder even checkpointed, and ComfyUI reports {free_bytes / 2 ** 30:.1f} GiB free; the "
        f"largest output that fits is {largest}. {advice}")


def use_checkpointing(choice: str, estimated_bytes: float, free_bytes: float) -> bool:
    """Whether the decoder copy runs checkpointed: as chosen, or for 'auto' when the estimate needs more
    than half of the free memory."""
    if choice not in DECODER_MEMORY:
        raise ValueError(f"decoder_memory must be one of {DECODER_MEMORY}, got {choice!r}")
    if choice != "auto":
        return choice == "checkpointed"
    return estimated_bytes > 0.5 * free_bytes


def decoder_memory_estimate(vae, precision: str, batch: int, latent_hw: tuple[int, int], method: str,
                            advice: str) -> tuple[float, float]:
    """(bytes the full KL decoder copy's activations need, bytes free on the VAE device) for decoding a
    ``batch`` x ``latent_hw`` latent; raises when even the checkpointed copy cannot fit (:func:`decoder_fit`).
    TAESD is small and not estimated."""
    if precision == "taesd":
        return 0.0, float("inf")
    ratio = downscale_ratio(vae, precision)
    height, width = latent_hw[0] * ratio, latent_hw[1] * ratio
    bits = torch.finfo(DECODERS[precision] or vae.vae_dtype).bits
    estimate = KL_DECODER_BYTES_PER_PIXEL * batch * height * width * bits / 32
    free = comfy.model_management.get_free_memory(vae.device)
    decoder_fit(batch, height, width, bits, free, ratio, method, advice)
    return estimate, free


def make_loss_decoder(vae, latent_format, precision: str, memory: str, batch: int, latent_hw: tuple[int, int],
                      method: str = "loss decoder", advice: str = FIT_ADVICE) -> DifferentiableDecoder | TAESDDecoder:
    """The pack-owned decoder copy a loss decodes ``batch`` x ``latent_hw`` latents through, built now.

    ``precision``: ``auto`` (the VAE's dtype), ``fp32``, ``bf16``, ``fp16`` or ``taesd`` (from
    ``models/vae_approx``). ``memory``: ``full``, ``checkpointed``, or ``auto`` (checkpointed when the
    estimate exceeds half the free memory, logged). Raises before building when even the checkpointed KL
    decoder cannot fit. Close it (or use ``with``) when the run ends.
    """
    check_decoder_choice(precision, memory)
    if precision == "taesd":  # small: checkpointed only when asked
        return TAESDDecoder(latent_format, checkpointed=memory == "checkpointed")
    estimate, free = decoder_memory_estimate(vae, precision, batch, latent_hw, method, advice)
    checkpointed = use_checkpointing(memory, estimate, free)
    if memory == "auto" and checkpointed:
        LOG.info("%s: decoder activations need about %.1f GiB, %.1f GiB free: checkpointing the decoder copy "
                  "(same result, slower)", method, estimate / 2 ** 30, free / 2 ** 30)
    decoder = DifferentiableDecoder(vae, DECODERS[precision], checkpointed=checkpointed)
    if decoder.checkpointed_blocks:
        LOG.info("%s: decoder copy checkpointed (%d blocks recomputed in backward)", method,
                  decoder.checkpointed_blocks)
    return decoder


class LossDecoderSpec:
    """A loss decoder's settings by plain values; builds the copy per run (:meth:`build`) and never holds it.

    Safe inside ``model_options`` (a model patch's state): ``ModelPatcher.clone()`` deep-copies them, and this
    object is immutable, so a deep copy is the object itself.
    """

    def __init__(self, vae, precision: str = "auto", memory: str = "auto", method: str = "loss decoder",
                 advice: str = FIT_ADVICE):
        check_decoder_choice(precision, memory)
        self.vae, self.precision, self.memory, self.method, self.advice = vae, precision, memory, method, advice

    def __deepcopy__(self, memo):
        return self

    @property
    def ratio(self) -> int:
        """Decoded pixels per latent cell along each side."""
        return downscale_ratio(self.vae, self.precision)

    @property
    def reduced_precision(self) -> bool:
        """Whether the copy runs below fp32 (TAESD runs in fp32)."""
        return self.precision != "taesd" and (DECODERS[self.precision] or self.vae.vae_dtype) != torch.float32

    def loss_scale(self, elements_per_image: int) -> float:
        """The loss multiplier for backward: 1 in fp32, the per-image element count in reduced precision."""
        return default_loss_scale(self.reduced_precision, elements_per_image)

    def scaler(self, elements_per_image: int) -> "LossScaler":
        """A :class:`LossScaler` for one run, starting at :meth:`loss_scale` (GradOP+'s per-pixel rationale)."""
        return LossScaler(self.loss_scale(elements_per_image), self.method, self.reduced_precision)

    def check_fit(self, batch: int, latent_hw: tuple[int, int]) -> None:
        """Raise now, before any sampling, when even the checkpointed decoder cannot fit."""
        decoder_memory_estimate(self.vae, self.precision, batch, latent_hw, self.method, self.advice)

    def build(self, latent_format, batch: int, latent_hw: tuple[int, int]) -> DifferentiableDecoder | TAESDDecoder:
        """:func:`make_loss_decoder` with these settings."""
        return make_loss_decoder(self.vae, latent_format, self.precision, self.memory, batch, latent_hw,
                                 self.method, self.advice)


# --- dynamic loss scaling ------------------------------------------------------------------------

# A loss's gradient through a reduced-precision decoder (or UNet, or CLIP) can underflow (too small for fp16 /
# bf16) or overflow (above fp16's 65,504). The loss is multiplied by a scale before backward and the gradient
# divided by it after. A scale that overflows is lowered and the gradient retried; the last resort is one pass
# with the decoder copy in fp32; if that fails too, the step is skipped (never a NaN/inf step) and the first
# skip of a run logs a warning.
BACKOFF = 8.0  # the scale is divided by this after a non-finite gradient
RETRIES = 6  # back-offs per gradient before the fp32 pass: the scale can fall 8^6 = 262,144 fold
GROWTH_INTERVAL = 4  # after this many finite gradients in a row the scale doubles again, up to its start


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class LossScaler:
    """Dynamic loss scaling with back-off, for one run of one method (``method`` names it in the warning).

    :meth:`gradient` returns ``d loss / d inputs`` computed as ``grad(scale * loss) / scale``. When a gradient
    is not finite and ``reduced_precision``, the scale is divided by ``backoff`` and the gradient recomputed
    (a fresh forward; up to ``retries`` times); the lowered scale is kept for the next call and doubles again
    after ``growth_interval`` finite gradients, never above the start. When the retries are spent (or the loss
    itself is not finite, which no scale can mend), ``full_precision`` (a context manager factory, e.g. a
    decoder copy's :meth:`_OwnedDecoder.full_precision`) gives one fp32 pass at scale 1. If that fails too, or
    there is none, the result is None: the caller skips the step. ``skipped`` counts skips, ``backoffs`` the
    scale reductions; the first skip logs one warning.
    """

    def __init__(self, scale: float, method: str, reduced_precision: bool = True, backoff: float = BACKOFF,
                 retries: int = RETRIES, growth_interval: int = GROWTH_INTERVAL):
        scale = float(scale)
        if not scale > 0 or not torch.isfinite(torch.tensor(scale)):
            raise ValueError(f"loss scale must be a positive finite number, got {scale}")
        if backoff <= 1:
            raise ValueError(f"backoff must be larger than 1, got {backoff}")
        self.initial = self.scale = scale
        self.method, self.reduced_precision = method, bool(reduced_precision)
        self.backoff, self.retries, self.growth_interval = float(backoff), int(retries), int(growth_interval)
        self.skipped = self.backoffs = self.full_precision_passes = 0
        self._good = 0

    def gradient(self, loss_fn: Callable[[], torch.Tensor], inputs, full_precision=None,
                 what: str = "guided step") -> list[torch.Tensor] | None:
        """``[d loss / d input for input in inputs]`` of the scalar ``loss_fn()``, finite, or None (skip)."""
        inputs = list(inputs)
        retries = self.retries if self.reduced_precision else 0
        for attempt in range(retries + 1):
            loss = loss_fn()
            if not bool(torch.isfinite(loss.detach()).all()):
                break  # the forward overflowed: no scale helps
            scale = self.scale
            grads = torch.autograd.grad(loss * scale, inputs)
            del loss
            if _all_finite(grads):
                self._grown()
                return [g / scale for g in grads]
            if attempt < retries:
                self.scale /= self.backoff
                self.backoffs += 1
                self._good = 0
                LOG.debug("%s: non-finite gradient at loss scale %g; retrying at %g", self.method, scale,
                           self.scale)
        tried_fp32 = full_precision is not None
        if tried_fp32:
            self.full_precision_passes += 1
            try:
                with full_precision():
                    loss = loss_fn()
                    if bool(torch.isfinite(loss.detach()).all()):
                        grads = torch.autograd.grad(loss, inputs)
                        if _all_finite(grads):
                            return list(grads)
            except comfy.model_management.OOM_EXCEPTION as error:  # the fp32 copy may not fit where 16-bit did
                if isinstance(error, comfy.model_management.InterruptProcessingException):
                    raise  # OOM_EXCEPTION is Exception itself on builds without CUDA's
                loss = grads = None
                comfy.model_management.soft_empty_cache()
                LOG.info("%s: no memory for the fp32 decoder pass", self.method)
        self._skip(what, tried_fp32)
        return None

    def _grown(self) -> None:
        self._good += 1
        if self.scale < self.initial and self._good >= self.growth_interval:
            self.scale = min(self.initial, self.scale * 2.0)
            self._good = 0

    def _skip(self, what: str, tried_fp32: bool) -> None:
        self.skipped += 1
        if self.skipped == 1:
            tried = f"loss scale {'down to ' if self.backoffs else ''}{self.scale:g}"
            tried += ", then an fp32 decoder pass" if tried_fp32 else ""
            hint = (" A higher-precision decoder (fp32, or bf16 for its range) may avoid it."
                    if self.reduced_precision else "")
            guard.report(f"{self.method}: the loss gradient is not finite ({tried}); this {what} is skipped, "
                         f"left unguided. Later skips in this run are not logged.{hint}")
