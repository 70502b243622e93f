"""SyncDiffusion / MultiDiffusion panorama nodes and Seamless Decode.

Both sampler forms run one KSAMPLER function (:func:`panorama_sampler`). It wraps the sampler's model
(the CFG'd denoiser) in :class:`TiledModel`: ``tiled(x, sigma)`` crops x into the planned windows, at a sync
step nudges each window's own copy towards the anchor window along the LPIPS gradient (through
``gradients.DifferentiableDenoiser`` and the loss decoder), denoises every window and returns the per-pixel
average of their x0 predictions. Any k-diffusion sampler then runs on ``tiled``. At a sync step the returned
x0 carries a correction so that one Euler/DDIM step of the global x equals the average of the windows' own
steps from their nudged copies (``guidance/panorama.first_order_x0``): exact for euler / ddim, the
reference's DDIM; other samplers step on the same window-averaged x0 (docs/methods/panorama.md).
The math is in ``guidance/panorama.py``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from comfy_api.latest import io

import comfy.latent_formats
import comfy.model_management
import comfy.model_sampling
import comfy.sample
import comfy.samplers
import comfy.utils

from ..guidance import panorama
from . import panorama_view, window_conds
from .toolkit import gradients, host, log, lpips_model, sampling

CATEGORY = "guided_synthesis/panorama"
LOG = log.logger("panorama")
METHOD = "SyncDiffusion"
FIT_ADVICE = "Lower sync_batch or window_size, or use loss_decoder 'taesd'."
UNET_JACOBIAN = ("exact", "none (approximate)")
LPIPS_SIZES = {"full": 1, "1/2 (approximate)": 2, "1/4 (approximate)": 4}  # option -> downscale factor
LATENT_PX = 8  # pixels per latent cell (SD1/SD2/SDXL/SD3/Flux VAEs)


@dataclass
class PanoramaConfig:
    """Everything a panorama sampler run needs besides the model and the schedule (sizes in pixels)."""

    vae: object
    sampler_name: str = "euler"
    window_size: int = 0
    stride: int = 128
    sync_weight: float = panorama.DEFAULT_SYNC_WEIGHT
    decay: float = panorama.DEFAULT_DECAY
    sync_steps: int = panorama.DEFAULT_SYNC_STEPS
    sync_every: int = 1
    anchor: int = -1
    lpips_net: str = "vgg"
    loss_decoder: str = "auto"
    unet_jacobian: str = UNET_JACOBIAN[0]
    loop: bool = False
    window_batch: int = 4
    sync_batch: int = 1
    decoder_memory: str = "auto"
    lpips_size: str = "full"
    decoder_spec: gradients.LossDecoderSpec | None = field(default=None, init=False)

    def validate(self) -> None:
        if self.window_size < 0 or self.window_size % LATENT_PX:
            raise ValueError(f"window_size must be 0 (by model) or a positive multiple of 8 pixels, got "
                             f"{self.window_size}")
        if self.stride < LATENT_PX or self.stride % LATENT_PX:
            raise ValueError(f"stride must be a positive multiple of 8 pixels, got {self.stride}")
        if self.window_size and self.stride > self.window_size:
            raise ValueError(f"stride ({self.stride} px) must not be larger than window_size "
                             f"({self.window_size} px): pixels between windows would never be denoised")
        if self.sync_weight < 0:
            raise ValueError(f"sync_weight must be 0 (MultiDiffusion) or more, got {self.sync_weight}")
        if self.sync_every < 1:
            raise ValueError(f"sync_every must be at least 1, got {self.sync_every}")
        if self.anchor < -1:
            raise ValueError(f"anchor must be -1 (the middle window) or a window index, got {self.anchor}")
        if self.lpips_net not in lpips_model.NETS:
            raise ValueError(f"lpips_net must be one of {', '.join(lpips_model.NETS)}, got {self.lpips_net!r}")
        if self.lpips_size not in LPIPS_SIZES:
            raise ValueError(f"lpips_size must be one of {', '.join(LPIPS_SIZES)}, got {self.lpips_size!r}")
        if self.unet_jacobian not in UNET_JACOBIAN:
            raise ValueError(f"unet_jacobian must be one of {UNET_JACOBIAN}, got {self.unet_jacobian!r}")
        if self.window_batch < 1 or self.sync_batch < 1:
            raise ValueError("window_batch and sync_batch must be at least 1")
        if self.loss_decoder not in gradients.DECODERS:
            raise ValueError(f"loss_decoder must be one of {', '.join(gradients.DECODERS)}, got {self.loss_decoder!r}")
        self.decoder_spec = gradients.LossDecoderSpec(self.vae, self.loss_decoder, self.decoder_memory, METHOD,
                                                      FIT_ADVICE)

    def syncing(self) -> bool:
        return self.sync_weight > 0 and self.sync_steps > 0


def model_window(latent_format) -> int:
    """window_size 0: the model's native size in latent cells (SDXL 128 = 1024 px; else 64 = 512 px)."""
    return 128 if isinstance(latent_format, comfy.latent_formats.SDXL) else 64


def plan(config: PanoramaConfig, latent_h: int, latent_w: int, latent_format) -> tuple[list, int]:
    """(windows, anchor index) for a latent canvas; errors name the input to change."""
    window = config.window_size // LATENT_PX if config.window_size else model_window(latent_format)
    stride = config.stride // LATENT_PX
    if stride > window:
        raise ValueError(f"stride ({config.stride} px) must not be larger than the window "
                         f"({window * LATENT_PX} px, window_size)")
    if latent_h < window or latent_w < window:
        raise ValueError(f"the canvas ({latent_w * LATENT_PX}x{latent_h * LATENT_PX} px, width x height) is smaller "
                         f"than one window ({window * LATENT_PX} px, window_size "
                         f"{config.window_size or '0 = by model'}); make width/height larger or window_size smaller")
    windows = panorama.plan_windows(latent_h, latent_w, window, window, stride, stride, config.loop)
    if config.syncing():
        lpips_model.check_side(config.lpips_net, window * LATENT_PX, LPIPS_SIZES[config.lpips_size])
    try:
        anchor = panorama.anchor_index(len(windows), config.anchor)
    except ValueError as error:
        raise ValueError(f"{error} (this canvas has {len(windows)} windows)") from None
    return windows, anchor


class TiledModel:
    """``model(x, sigma, **extra_args)`` over the windows: the merged x0 of the window crops (see module doc).

    Other attributes are the wrapped model's, so samplers that look up ``inner_model`` still work.
    """

    def __init__(self, model, sigmas, windows, anchor, config: PanoramaConfig, flow: bool, on_batch,
                 conds: window_conds.WindowConditioning, denoiser=None, decoder=None, distance=None,
                 latent_format=None, scaler: gradients.LossScaler | None = None):
        self._model = model
        self._sigmas = [float(s) for s in sigmas]
        self._windows, self._anchor, self._config, self._flow = windows, anchor, config, flow
        self._on_batch = on_batch
        self._denoiser, self._decoder, self._distance = denoiser, decoder, distance
        self._latent_format, self._scaler = latent_format, scaler
        self._synced: set[int] = set()
        self._post_cfg: list = []
        self._unconds: dict = {}
        self._last_uncond = None
        self._items = 0
        self._conds = conds

    def __getattr__(self, name):
        if name.startswith("_"):  # own state only (and no recursion before __init__ has run)
            raise AttributeError(name)
        return getattr(self._model, name)

    def _step(self, sigma: float) -> int | None:
        for index, value in enumerate(self._sigmas[:-1]):
            if abs(value - sigma) <= 1e-6 * max(1.0, abs(sigma)):
                return index
        return None

    @contextlib.contextmanager
    def _window_args(self, group, args: dict):
        """The call's extra args for the windows of ``group``: the conditioning cropped per window
        (nodes/window_conds.py) and the sampler's noise mask, latent and noise cropped likewise."""
        args = dict(args, model_options=self._conds.options(args.get("model_options") or {}, group))
        mask = args.get("denoise_mask")
        if mask is None:
            yield args
            return
        model = self._model
        saved = model.latent_image, model.noise
        crops = self._conds.crops
        model.latent_image, model.noise = crops(saved[0], group), crops(saved[1], group)
        try:
            yield dict(args, denoise_mask=crops(mask, group))
        finally:
            model.latent_image, model.noise = saved

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **args) -> torch.Tensor:
        self._items = x.shape[0]
        out = self._merged(x, sigma, args)
        if self._post_cfg:  # CFG++ samplers: their post-CFG hook sees the whole canvas' merged uncond once more
            uncond = panorama.merge([self._unconds[index] for index in range(len(self._windows))], self._windows,
                                    x.shape)
            options = args.get("model_options") or {}
            for function in self._post_cfg:
                function({"denoised": out, "uncond_denoised": uncond, "cond_denoised": out, "cond": None,
                          "uncond": None, "cond_scale": None, "sigma": sigma, "input": x, "model_options": options,
                          "model": self._model.inner_model.inner_model})
        return out

    def _record_uncond(self, hook_args: dict) -> torch.Tensor:
        self._last_uncond = hook_args["uncond_denoised"]
        return hook_args["denoised"]

    def _merged(self, x: torch.Tensor, sigma: torch.Tensor, args: dict) -> torch.Tensor:
        value = float(sigma.reshape(-1)[0])
        config = self._config
        step = self._step(value)
        sync = (step is not None and step not in self._synced and self._denoiser is not None
                and panorama.syncs_at(step, config.sync_steps, config.sync_every))
        options = args.get("model_options") or {}
        self._post_cfg = list(options.get("sampler_post_cfg_function", []))
        self._unconds = {}
        if self._post_cfg:  # record each window's uncond x0 (the sampler's hook would see one window's)
            args = dict(args, model_options={**options, "sampler_post_cfg_function": [*self._post_cfg,
                                                                                      self._record_uncond]})

        def plain(xs, s, group):
            host.check_interrupt()
            sig = torch.full((xs.shape[0],), s, dtype=sigma.dtype, device=sigma.device)
            with self._window_args(group, args) as call_args:
                out = self._model(xs, sig, **call_args)
            if self._post_cfg:
                for position, index in enumerate(group):
                    self._unconds[index] = self._last_uncond[position * self._items:(position + 1) * self._items]
            return out

        if not sync:
            crops = [panorama.crop(x, window) for window in self._windows]
            return panorama.merged_x0(crops, self._windows, x.shape, value, plain, config.window_batch,
                                      self._on_batch)
        self._synced.add(step)
        weight = panorama.sync_weight(step, config.sync_weight, config.decay)

        def with_grad(xs, s, group):
            host.check_interrupt()
            with self._window_args(group, args) as call_args:
                return self._denoiser(xs, s, call_args)

        def decode(x0):
            host.check_interrupt()  # between a window group's UNet pass and its decode / LPIPS / backward
            return self._decoder.decode_model_space(x0, self._latent_format, clamp=True)

        def gradient(loss_fn, inputs):
            full = self._decoder.full_precision if self._decoder.reduced_precision else None
            return self._scaler.gradient(loss_fn, inputs, full, what="sync step of a window batch")

        with gradients.grad_enabled():
            crops = panorama.synced_crops(gradients.owned(x), self._windows, value, weight, self._anchor, plain,
                                          with_grad, decode, self._distance, config.sync_batch, self._flow,
                                          on_batch=self._on_batch, gradient=gradient)
            crops = [c.detach() for c in crops]
        x0 = panorama.merged_x0(crops, self._windows, x.shape, value, plain, config.window_batch, self._on_batch)
        x_mean = panorama.merge(crops, self._windows, x.shape)
        return panorama.first_order_x0(x, x0, x_mean.to(x0.device), value, self._sigmas[step + 1])


def panorama_sampler(config: PanoramaConfig) -> comfy.samplers.KSAMPLER:
    """A SAMPLER running SyncDiffusion (MultiDiffusion with sync_weight 0) around ``config.sampler_name``."""
    config.validate()

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = dict(extra_args or {})
        host.check_finite_mask(extra_args.get("denoise_mask"), "noise_mask (of the sampler's latent)")
        base_model = model.inner_model.inner_model
        latent_format = base_model.latent_format
        flow = isinstance(base_model.model_sampling, comfy.model_sampling.CONST)
        windows, anchor = plan(config, x.shape[-2], x.shape[-1], latent_format)
        conds = window_conds.WindowConditioning(base_model, windows, x.shape, LATENT_PX)
        steps = len(sigmas) - 1
        sync_steps = [i for i in range(steps) if config.syncing()
                      and panorama.syncs_at(i, config.sync_steps, config.sync_every)]
        progress = host.SamplingProgress(model.inner_model.model_patcher,
                                         steps * len(windows) + len(sync_steps) * (len(windows) - 1))
        last: dict = {}

        def on_batch(count: int) -> None:
            host.check_interrupt()
            progress.advance(count)

        def step_callback(step: dict) -> None:
            last.update(step)
            preview = None
            if progress.previewer is not None:
                preview = progress.previewer.decode_latent_to_preview_image("JPEG", step["denoised"])
            progress.pbar.update_absolute(min(progress.done, progress.total), progress.total, preview)

        denoiser = decoder = distance = None
        try:
            scaler = None
            if sync_steps and len(windows) > 1:
                window = windows[0]
                batch = config.sync_batch * x.shape[0]
                config.decoder_spec.check_fit(batch, (window.height, window.width))
                distance = lpips_model.LPIPSDistance(lpips_model.load_lpips(config.lpips_net),
                                                     LPIPS_SIZES[config.lpips_size])
                decoder = config.decoder_spec.build(latent_format, batch, (window.height, window.width))
                ratio = config.decoder_spec.ratio
                scaler = config.decoder_spec.scaler(3 * window.height * ratio * window.width * ratio)
                denoiser = gradients.DifferentiableDenoiser(model, extra_args, METHOD)
                if config.unet_jacobian != UNET_JACOBIAN[0]:
                    denoiser.mode = denoiser.IDENTITY  # approximate: d x0 / d x = I, no UNet backward
            tiled = TiledModel(model, sigmas, windows, anchor, config, flow, on_batch, conds, denoiser, decoder,
                               distance, latent_format, scaler)
            sampler = comfy.samplers.sampler_object(config.sampler_name)
            host.check_interrupt()
            x = sampler.sampler_function(tiled, x, sigmas, extra_args=extra_args, callback=step_callback,
                                         disable=True, **sampler.extra_options)
        finally:
            conds.close()
            if denoiser is not None:
                denoiser.close()
            if decoder is not None:
                decoder.close()
            if distance is not None:
                distance.close()
                comfy.model_management.soft_empty_cache()
        if callback is not None and last:
            callback(last)
        return x

    return comfy.samplers.KSAMPLER(sample)


# --- Seamless Decode ---------------------------------------------------------------------------

def seamless_decode(vae, latent: torch.Tensor, tile: int, overlap: int, circular: bool) -> torch.Tensor:
    """Decode a raw latent [B,C,H,W] in tiles of ``tile`` latent cells blended over ``overlap`` cells
    (``panorama.tiles`` / ``blend_weights``); ``circular`` pads ``overlap`` wrapped columns on each side
    first and crops them after, so the left and right edges are decoded as neighbours (360 degrees)."""
    # at most the latent's width: the wrapped padding cannot be wider than the latent, and the crop below
    # removes exactly what was padded (an overlap wider than the latent would otherwise crop the image itself)
    pad = min(max(overlap, 1), latent.shape[-1]) if circular else 0
    z = panorama.circular_pad(latent, pad) if circular else latent
    height, width = z.shape[-2:]
    rows, cols = panorama.tiles(height, tile, overlap), panorama.tiles(width, tile, overlap)
    out = weights = None
    ratio = 1
    for top, bottom in rows:
        for left, right in cols:
            host.check_interrupt()
            image = vae.decode(z[..., top:bottom, left:right])
            if image.ndim == 5:
                image = image.reshape(-1, *image.shape[-3:])
            ratio = image.shape[1] // (bottom - top)
            if out is None:
                out = torch.zeros(image.shape[0], height * ratio, width * ratio, image.shape[-1])
                weights = torch.zeros(height * ratio, width * ratio)
            wy = panorama.blend_weights(height * ratio, (top * ratio, bottom * ratio), overlap * ratio)
            wx = panorama.blend_weights(width * ratio, (left * ratio, right * ratio), overlap * ratio)
            w = wy[:, None] * wx[None, :]
            out[:, top * ratio:bottom * ratio, left * ratio:right * ratio] += image.float().cpu() * w[..., None]
            weights[top * ratio:bottom * ratio, left * ratio:right * ratio] += w
    out = out / weights[..., None]
    if circular:
        out = out[:, :, pad * ratio:(width - pad) * ratio]
    return out.clamp(0, 1)


class SeamlessDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GS_SeamlessDecode",
            display_name="Seamless Decode (panorama)",
            category=CATEGORY,
            description="VAE decode for panoramas: in overlapping tiles blended linearly, so a very wide latent "
                        "decodes within the memory of one tile; 'circular' decodes a 360-degree panorama with "
                        "wrapped padding so its left and right edges meet without a seam.",
            inputs=[
                io.Latent.Input("samples", tooltip="The panorama latent (e.g. from SyncDiffusion Panorama Sampler)."),
                io.Vae.Input("vae", tooltip="The VAE to decode with (not modified)."),
                io.Int.Input("tile_size", default=512, min=64, max=8192, step=8,
                             tooltip="Tile size in pixels (a multiple of 8); memory grows with its square."),
                io.Int.Input("overlap", default=64, min=0, max=1024, step=8,
                             tooltip="Overlap between tiles in pixels (a multiple of 8), blended linearly; "
                                     "also the wrapped padding on each side when circular."),
                io.Boolean.Input("circular", default=False,
                                 tooltip="360-degree panorama: the left and right edges are decoded as "
                                         "neighbours (wrap padding), so the image tiles horizontally. The node "
                                         "then shows it in a 360-degree viewer (drag to turn, wheel to zoom)."),
            ],
            outputs=[io.Image.Output(tooltip="The decoded panorama.")],
        )

    @classmethod
    @host.validated
    def execute(cls, samples, vae, tile_size, overlap, circular) -> io.NodeOutput:
        for name, value in (("tile_size", tile_size), ("overlap", overlap)):
            if value % LATENT_PX:
                raise ValueError(f"{name} must be a multiple of 8 pixels, got {value}")
        if overlap * 2 > tile_size:
            raise ValueError(f"overlap ({overlap} px) must be at most half of tile_size ({tile_size} px)")
        latent = samples["samples"]
        if latent.ndim != 4:
            raise ValueError(f"samples must be an image latent [batch, channels, height, width], got shape "
                             f"{tuple(latent.shape)}")
        image = seamless_decode(vae, latent, tile_size // LATENT_PX, overlap // LATENT_PX, circular)
        return io.NodeOutput(image, ui=panorama_view.panorama_ui(image) if circular else None)


# --- node inputs shared by both sampler forms ------------------------------------------------------

def _method_inputs() -> list:
    return [
        io.Vae.Input("vae", tooltip="The VAE whose decoder the sync loss decodes through (a private copy; ignored "
                                    "for loss_decoder 'taesd')."),
        io.Int.Input("window_size", default=0, min=0, max=4096, step=8,
                     tooltip="Window side in pixels (a multiple of 8). 0 = the model's native size: 512 px for "
                             "SD1/SD2, 1024 px for SDXL."),
        io.Int.Input("stride", default=128, min=8, max=4096, step=8,
                     tooltip="Distance between windows in pixels (a multiple of 8, at most the window). The "
                             "SyncDiffusion scripts use 128 px (16 latent), MultiDiffusion 64 px. Smaller: more "
                             "windows, smoother, slower."),
        io.Float.Input("sync_weight", default=20.0, min=0.0, max=1000.0, step=0.5,
                       tooltip="SyncDiffusion gradient weight w (reference 20), applied as w*decay^i*(1+sigma^2) "
                               "in sampler space. 0 = plain MultiDiffusion (no LPIPS, no gradients)."),
        io.Float.Input("decay", default=0.95, min=0.0, max=1.0, step=0.01,
                       tooltip="The weight at step i is sync_weight*decay^i (reference 0.95)."),
        io.Int.Input("sync_steps", default=10, min=0, max=10000,
                     tooltip="Sync during the first this many steps (reference script: 10 of 50); after them, "
                             "plain MultiDiffusion."),
        io.Int.Input("sync_every", default=1, min=1, max=1000,
                     tooltip="Sync at every k-th step only (1 = every step, the reference). Above 1: an "
                             "approximation that saves time."),
        io.Int.Input("anchor", default=-1, min=-1, max=10000,
                     tooltip="The window the others are pulled towards: -1 = the middle window (reference), else "
                             "its index in raster order (rows, then columns)."),
        io.Combo.Input("lpips_net", options=list(lpips_model.NETS), default="vgg",
                       tooltip="LPIPS trunk. vgg: the reference. alex / squeeze: faster, approximate. Weights from "
                               "models/lpips (torchvision's vgg16 / alexnet / squeezenet1_1 file) or the torch hub "
                               "cache; never downloaded."),
        io.Combo.Input("loss_decoder", options=list(gradients.DECODERS), default="auto",
                       tooltip="Decoder inside the sync loss (a private copy). auto: the VAE's precision. fp32: as "
                               "the reference (which autocasts to fp16). bf16/fp16: faster, half the memory. taesd: "
                               "the fast TAESD decoder from models/vae_approx, much cheaper, approximate."),
        io.Combo.Input("unet_jacobian", options=list(UNET_JACOBIAN), default=UNET_JACOBIAN[0],
                       tooltip="exact: the gradient flows through the UNet (both CFG branches), as the reference. "
                               "none: approximate, d x0/d x taken as identity; no UNet backward (much less memory "
                               "and time). exact falls back to none with a warning if the model has no backward."),
        io.Boolean.Input("loop", default=False,
                         tooltip="360-degree panorama: windows wrap around the right edge to the left, so the two "
                                 "edges join. Decode with Seamless Decode (circular). The SyncDiffusion Panorama "
                                 "Sampler then shows the latent's rough colours in a 360-degree viewer."),
        io.Int.Input("window_batch", default=4, min=1, max=256,
                     tooltip="Windows denoised together in the plain (no gradient) pass: faster, more memory; "
                             "same result."),
    ]


def _extra_inputs() -> list:
    return [
        io.Int.Input("sync_batch", default=1, min=1, max=256, optional=True,
                     tooltip="Windows per gradient pass at a sync step (each holds UNet, decoder and LPIPS "
                             "activations: see the README's memory arithmetic); same result."),
        io.Combo.Input("decoder_memory", options=list(gradients.DECODER_MEMORY), default="auto", optional=True,
                       tooltip="Memory of the loss decoder copy: full, checkpointed (same result, about a third "
                               "of the memory, slower), auto (checkpointed when needed)."),
        io.Combo.Input("lpips_size", options=list(LPIPS_SIZES), default="full", optional=True,
                       tooltip="Image size LPIPS compares at. full: the window's decoded size, as the reference. "
                               "1/2, 1/4: the decoded windows are area-averaged down first; the LPIPS network "
                               "costs 4x / 16x less; approximate."),
    ]


def _config(vae, sampler_name, window_size, stride, sync_weight, decay, sync_steps, sync_every, anchor, lpips_net,
            loss_decoder, unet_jacobian, loop, window_batch, sync_batch, decoder_memory, lpips_size) -> PanoramaConfig:
    return PanoramaConfig(vae=vae, sampler_name=sampler_name, window_size=window_size, stride=stride,
                          sync_weight=sync_weight, decay=decay, sync_steps=sync_steps, sync_every=sync_every,
                          anchor=anchor, lpips_net=lpips_net, loss_decoder=loss_decoder, unet_jacobian=unet_jacobian,
                          loop=loop, window_batch=window_batch, sync_batch=sync_batch, decoder_memory=decoder_memory,
                          lpips_size=lpips_size)


class SyncDiffusion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GS_SyncDiffusion",
            display_name="SyncDiffusion Panorama Sampler",
            category=CATEGORY,
            description="Coherent wide images at any size (Lee et al., NeurIPS 2023): overlapping windows are "
                        "denoised and averaged (MultiDiffusion), and during the first steps each window is pulled "
                        "towards the anchor window along an LPIPS gradient so they show one scene. sync_weight 0 "
                        "is MultiDiffusion; loop makes a 360-degree panorama.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SD1.x, SD2, SDXL, ...)."),
                io.Conditioning.Input("positive", tooltip="What the panorama should show."),
                io.Conditioning.Input("negative", tooltip="What it should avoid."),
                io.Vae.Input("vae", tooltip="The VAE whose decoder the sync loss decodes through (a private copy; "
                                            "ignored for loss_decoder 'taesd')."),
                io.Int.Input("width", default=2048, min=8, max=32768, step=8,
                             tooltip="Panorama width in pixels (a multiple of 8, at least window_size)."),
                io.Int.Input("height", default=512, min=8, max=16384, step=8,
                             tooltip="Panorama height in pixels (a multiple of 8, at least window_size)."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Panoramas (each with its own noise)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the initial noise; the same seed gives the same panorama."),
                io.Int.Input("steps", default=50, min=1, max=10000, tooltip="Sampler steps (reference: DDIM 50)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale (reference 7.5)."),
                io.Combo.Input("sampler_name", options=host.SAMPLER_NAMES, default="euler",
                               tooltip="euler or ddim (with ddim_uniform) is the reference's DDIM and exact. Other "
                                       "samplers step on the window-averaged x0 (see README)."),
                io.Combo.Input("scheduler", options=host.SCHEDULER_NAMES, default="ddim_uniform",
                               tooltip="Noise schedule; ddim_uniform is the reference's DDIM spacing."),
                *[i for i in _method_inputs() if i.id != "vae"],
                *_extra_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="The panorama latent; decode it with Seamless Decode.")],
        )

    @classmethod
    @host.validated
    def execute(cls, model, positive, negative, vae, width, height, batch_size, seed, steps, cfg, sampler_name,
                scheduler, window_size, stride, sync_weight, decay, sync_steps, sync_every, anchor, lpips_net,
                loss_decoder, unet_jacobian, loop, window_batch, sync_batch=1, decoder_memory="auto",
                lpips_size="full") -> io.NodeOutput:
        for name, value in (("width", width), ("height", height)):
            if value % LATENT_PX:
                raise ValueError(f"{name} must be a multiple of 8 pixels, got {value}")
        config = _config(vae, sampler_name, window_size, stride, sync_weight, decay, sync_steps, sync_every, anchor,
                         lpips_net, loss_decoder, unet_jacobian, loop, window_batch, sync_batch, decoder_memory,
                         lpips_size)
        latent_format = model.get_model_object("latent_format")
        config.validate()
        plan(config, height // LATENT_PX, width // LATENT_PX, latent_format)  # input errors before any work
        if config.syncing():
            lpips_model.trunk_file(lpips_net)
        out = sampling.sample_from_empty(model, panorama_sampler(config), positive, negative, seed, steps, cfg,
                                         sampler_name, scheduler, batch_size, height, width, LATENT_PX)
        return io.NodeOutput({"samples": out}, ui=panorama_view.latent_ui(out, latent_format) if loop else None)


class SyncDiffusionSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GS_SyncDiffusionSampler",
            display_name="SyncDiffusion Sampler (SamplerCustom)",
            category=CATEGORY,
            description="SyncDiffusion / MultiDiffusion as a SAMPLER for SamplerCustom / SamplerCustomAdvanced, so "
                        "it composes with LoRAs, guiders and region prompts. Use an empty latent of the panorama "
                        "size and ddim_uniform sigmas.",
            inputs=[
                io.Combo.Input("sampler_name", options=host.SAMPLER_NAMES, default="euler",
                               tooltip="Sampler run on the window-averaged model (euler / ddim: the reference, "
                                       "exact)."),
                *_method_inputs(),
                *_extra_inputs(),
            ],
            outputs=[io.Sampler.Output(tooltip="Connect to SamplerCustom's or SamplerCustomAdvanced's sampler.")],
        )

    @classmethod
    @host.validated
    def execute(cls, sampler_name, vae, window_size, stride, sync_weight, decay, sync_steps, sync_every, anchor,
                lpips_net, loss_decoder, unet_jacobian, loop, window_batch, sync_batch=1,
                decoder_memory="auto", lpips_size="full") -> io.NodeOutput:
        config = _config(vae, sampler_name, window_size, stride, sync_weight, decay, sync_steps, sync_every, anchor,
                         lpips_net, loss_decoder, unet_jacobian, loop, window_batch, sync_batch, decoder_memory,
                         lpips_size)
        if config.syncing():
            lpips_model.trunk_file(lpips_net)
        return io.NodeOutput(panorama_sampler(config))


