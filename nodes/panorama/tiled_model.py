"""The tiled model of a panorama run: ``TiledModel(x, sigma)`` crops x into the planned windows, at a sync step
nudges each window's own copy towards the anchor window along the LPIPS gradient (through
``gradients.DifferentiableDenoiser`` and the loss decoder), denoises every window and returns the per-pixel
average of their x0 predictions. At a sync step the returned x0 carries a correction so that one Euler/DDIM step
of the global x equals the average of the windows' own steps from their nudged copies
(``guidance/panorama.first_order_x0``): exact for euler / ddim, the reference's DDIM; other samplers step on the
same window-averaged x0 (docs/methods/panorama.md). The math is in ``guidance/panorama.py``.
"""
from __future__ import annotations

import contextlib

import torch

import comfy.latent_formats

from ...guidance import panorama
from ..toolkit import gradients, host, lpips_model
from . import window_conds
from .config import LATENT_PX, LPIPS_SIZES, PanoramaConfig


def model_window(latent_format) -> int:
    """window_size 0: the model's native size in latent cells: 64 (512 px) for SD1.x/SD2 (their latent format),
    128 (1024 px) for SDXL and the flow transformers (SD3.5, Flux.1, Chroma, Qwen-Image, Z-Image)."""
    return 64 if type(latent_format) is comfy.latent_formats.SD15 else 128


def patch_cells(diffusion_model) -> int:
    """Latent cells per side of one transformer patch: 2 on the 2x2-patch DiTs (Flux.1, SD3.5, Chroma,
    Qwen-Image, Z-Image), 1 on UNets (no patch_size)."""
    size = getattr(diffusion_model, "patch_size", 1) or 1
    return int(size[-1] if isinstance(size, (tuple, list)) else size)


def plan(config: PanoramaConfig, latent_h: int, latent_w: int, latent_format, patch: int = 1) -> tuple[list, int]:
    """(windows, anchor index) for a latent canvas; errors name the input to change. ``patch``: the model's patch
    side in latent cells (:func:`patch_cells`); windows and strides off that grid are refused, since the model
    would pad each window to its patch grid on its own and the windows would no longer line up with its tokens."""
    window = config.window_size // LATENT_PX if config.window_size else model_window(latent_format)
    stride = config.stride // LATENT_PX
    grid = patch * LATENT_PX
    for name, cells in (("window_size", window if config.window_size else 0), ("stride", stride)):
        if cells % patch:
            raise ValueError(f"{name} ({cells * LATENT_PX} px) must be a multiple of {grid} px on this model: it "
                             f"works on {patch}x{patch}-cell ({grid} px) patches")
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
        (nodes/panorama/window_conds.py) and the sampler's noise mask, latent and noise cropped likewise."""
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
