"""Conditioning cropped to the windows of a tiled (panorama) sampling run, without global patches.

ComfyUI prepares every conditioning entry for the whole canvas: inpainting models' ``c_concat`` at the
canvas' size, ControlNet hints scaled to the canvas, area and mask conditioning in canvas coordinates, SDXL's
size conditioning from the canvas' width and height. A window that calls the model on its crop needs each of
them cropped to the same window, so :class:`WindowConditioning` installs a ``sampler_calc_cond_batch_function``
in the model options of each window call (chaining any such function already there) that rewrites the
entries for the windows of that call (window-major: k windows of batch B make k*B items):

- every ``CONDNoiseShape`` model cond with the canvas' size (``c_concat``): the windows' crops;
- ``area`` and ``mask``: the weights ComfyUI gives the entry on the whole canvas (feathered area edges,
  mask strength, strength; the host's own ``get_area_and_mult``), cropped per window and passed as a
  per-item mask. Inside a window the entry then acts as a mask (MultiDiffusion's region semantics): the
  model sees the whole window, and the entry's weight is the canvas' weight at each pixel;
- ControlNet / T2I-Adapter hints (and their extra concat inputs): scaled to the canvas as ComfyUI does it,
  cropped per window, on a shallow copy of each control in the chain (the user's control is not touched);
- SDXL's ``y`` (size conditioning): recomputed with the window's size as width / height, unless the
  conditioning sets its own width / height (CLIPTextEncodeSDXL).

GLIGEN position boxes are not cropped (logged once).
"""
from __future__ import annotations

import copy

import torch

import comfy.conds
import comfy.model_base
import comfy.samplers
import comfy.utils

from ...guidance import panorama
from ..toolkit import log

LOG = log.logger("panorama")
HOOK = "sampler_calc_cond_batch_function"
SIZE_CONDITIONED = (comfy.model_base.SDXL, comfy.model_base.SDXLRefiner)


class WindowConditioning:
    """Per-window conditioning for one sampling run on a canvas of ``canvas_shape`` (B, C, H, W latent)."""

    def __init__(self, base_model, windows, canvas_shape, latent_px: int = 8):
        self._model = base_model
        self._windows = windows
        self._items, self._height, self._width = canvas_shape[0], canvas_shape[-2], canvas_shape[-1]
        self._latent_px = latent_px
        self._weights: dict = {}  # id(entry) -> its canvas weights [B, H, W] (None: weight 1 everywhere)
        self._adm: dict = {}  # id(entry) -> the window-size SDXL y
        self._controls: dict = {}  # (id(control), windows) -> the cropped shallow copy
        self._keep: list = []  # the entries whose ids key the caches, alive for the run
        self._warned = False

    def options(self, model_options: dict, group) -> dict:
        """``model_options`` for a model call on the windows ``group`` (their crops, window-major)."""
        previous = model_options.get(HOOK)
        group = tuple(group)

        def calc_cond_batch(args: dict):
            device = args["input"].device
            conds = [None if entries is None else [self.entry(entry, group, device) for entry in entries]
                     for entries in args["conds"]]
            args = dict(args, conds=conds)
            if previous is not None:
                return previous(args)
            return comfy.samplers.calc_cond_batch(args["model"], conds, args["input"], args["sigma"],
                                                  args["model_options"])

        return {**model_options, HOOK: calc_cond_batch}

    def crops(self, tensor: torch.Tensor, group, scale: int = 1) -> torch.Tensor:
        """The windows' crops of a canvas-sized ``tensor`` [b, ..., H*scale, W*scale], each repeated to the run's
        batch and concatenated window-major."""
        tensor = comfy.utils.repeat_to_batch_size(tensor, self._items)
        parts = []
        for index in group:
            window = self._windows[index]
            scaled = panorama.Window(window.top * scale, window.left * scale, window.height * scale,
                                     window.width * scale)
            parts.append(panorama.crop(tensor, scaled))
        return torch.cat(parts)

    def entry(self, entry: dict, group, device=None) -> dict:
        """``entry`` (one prepared conditioning dict) for a model call on the windows ``group``."""
        out = dict(entry)
        model_conds = dict(entry.get("model_conds") or {})
        for key, value in model_conds.items():
            if isinstance(value, comfy.conds.CONDNoiseShape) and tuple(value.cond.shape[-2:]) == (self._height,
                                                                                               self._width):
                model_conds[key] = value._copy_with(self.crops(value.cond, group))
        if "y" in model_conds and isinstance(self._model, SIZE_CONDITIONED) and not (
                "width" in entry or "height" in entry):
            model_conds["y"] = comfy.conds.CONDRegular(self._window_adm(entry))
        out["model_conds"] = model_conds
        if "area" in entry or "mask" in entry:
            weights = self._canvas_weights(entry)
            for key in ("area", "set_area_to_bounds"):
                out.pop(key, None)
            out.update(mask=self.crops(weights, group).to(device or weights.device), mask_strength=1.0, strength=1.0)
        if entry.get("control") is not None:
            out["control"] = self._control(entry["control"], group)
        if "gligen" in entry and not self._warned:
            self._warned = True
            LOG.warning("GLIGEN boxes are given for the whole canvas and are not cropped per window")
        return out

    def _remember(self, entry: dict) -> None:
        self._keep.append(entry)

    def _canvas_weights(self, entry: dict) -> torch.Tensor:
        """The weight ComfyUI gives ``entry`` at each canvas pixel (``get_area_and_mult`` on the canvas)."""
        key = id(entry)
        if key not in self._weights:
            self._remember(entry)
            self._check_area(entry)
            probe = {k: v for k, v in entry.items() if k in ("area", "mask", "mask_strength", "strength", "uuid")}
            probe["model_conds"] = {}
            probe.setdefault("uuid", None)
            mask = entry.get("mask")
            device = mask.device if mask is not None else torch.device("cpu")
            canvas = torch.zeros(self._items, 1, self._height, self._width, device=device)
            found = comfy.samplers.get_area_and_mult(probe, canvas, torch.zeros(1))
            weights = torch.zeros(self._items, self._height, self._width, device=device)
            if found.area is None:
                weights[:] = found.mult[:, 0]
            else:
                height, width, top, left = found.area[:4]
                weights[:, top:top + height, left:left + width] = found.mult[:, 0]
            self._weights[key] = weights
        return self._weights[key]

    def _check_area(self, entry: dict) -> None:
        """An area conditioning that starts outside the canvas (ComfyUI would fail with a tensor ``narrow`` error)
        is refused with the area and the canvas in pixels."""
        area = entry.get("area")
        if area is None or len(area) < 4 or isinstance(area[0], str):
            return
        height, width, top, left = (int(v) for v in (area[0], area[1], area[-2], area[-1]))
        if top >= self._height or left >= self._width or top < 0 or left < 0 or height <= 0 or width <= 0:
            px = self._latent_px
            raise ValueError(f"conditioning area: {width * px}x{height * px} px at x={left * px}, y={top * px} lies "
                             f"outside the panorama canvas ({self._width * px}x{self._height * px} px, width x "
                             f"height); ConditioningSetArea's x and y must be inside the canvas (x < "
                             f"{self._width * px}, y < {self._height * px})")

    def _window_adm(self, entry: dict) -> torch.Tensor:
        key = id(entry)
        if key not in self._adm:
            self._remember(entry)
            window = self._windows[0]
            params = dict(entry)
            params.update(device=entry["model_conds"]["y"].cond.device, width=window.width * self._latent_px,
                          height=window.height * self._latent_px,
                          noise=torch.zeros(self._items, 4, window.height, window.width))
            self._adm[key] = self._model.encode_adm(**params)
        return self._adm[key]

    def _control(self, control, group):
        key = (id(control), group)
        if key not in self._controls:
            self._remember(control)
            window_control = copy.copy(control)
            scale = control.compression_ratio
            if getattr(control, "vae", None) is not None:
                scale *= control.vae.spacial_compression_encode()
            size = (self._width * scale, self._height * scale)
            hint = comfy.utils.common_upscale(control.cond_hint_original, *size, control.upscale_algorithm, "center")
            window_control.cond_hint_original = self.crops(hint, group, scale)
            window_control.extra_concat_orig = [
                self.crops(comfy.utils.common_upscale(extra, *size, control.upscale_algorithm, "center"), group, scale)
                for extra in getattr(control, "extra_concat_orig", [])]
            window_control.cond_hint = None
            window_control.extra_concat = None
            if control.previous_controlnet is not None:
                window_control.previous_controlnet = self._control(control.previous_controlnet, group)
            self._controls[key] = window_control
        return self._controls[key]

    def close(self) -> None:
        self._weights.clear()
        self._adm.clear()
        self._controls.clear()
        self._keep.clear()
