"""Host plumbing shared by the sampling nodes: schedules, noise, progress, previews, inputs."""
from __future__ import annotations

import functools
import inspect
import json
import math
from typing import Callable

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ...guidance.schedules import tabulated_inverse

SAMPLER_NAMES = comfy.samplers.SAMPLER_NAMES
SCHEDULER_NAMES = comfy.samplers.SCHEDULER_NAMES


def schedule_fn(model, sampler_name: str, scheduler: str) -> Callable[[int], torch.Tensor]:
    """``steps -> sigmas`` exactly as KSampler builds them (incl. the discard-penultimate samplers)."""
    ksampler = comfy.samplers.KSampler(model, steps=1, device="cpu", sampler=sampler_name,
                                       scheduler=scheduler, denoise=1.0, model_options=model.model_options)
    return lambda steps: ksampler.calculate_sigmas(steps).cpu().float()


def percent_to_sigma(model, percent: float) -> float:
    """The model's sigma at ``percent`` of its noise schedule (0 = pure noise, 1 = clean), as ControlNet's
    start_percent / end_percent read it (``model_sampling.percent_to_sigma``)."""
    return float(model.get_model_object("model_sampling").percent_to_sigma(float(percent)))


def time_sigma_maps(model) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """(t -> sigma, sigma -> t) on the model's own noise schedule; t in [0, 1], 1 = pure noise."""
    sampling = model.get_model_object("model_sampling")
    sigma_max = float(sampling.sigma_max)
    sigma_min = float(sampling.sigma_min)

    def time_to_sigma(t: float) -> float:
        if t >= 1.0:
            return sigma_max
        if t <= 0.0:
            return 0.0
        return min(max(float(sampling.percent_to_sigma(1.0 - t)), sigma_min), sigma_max)

    # sigma -> t for one sigma or a tensor of them, from one table of the schedule (vectorised: the paper
    # semantics at 10000 steps builds its schedule at once instead of 600000 bisection calls)
    return time_to_sigma, tabulated_inverse(time_to_sigma)


SEED_RANGE = 1 << 64  # the host's seed widgets go up to 2^64 - 1; torch generators take that range


def derived_seed(seed: int, offset: int) -> int:
    """``seed + offset`` wrapped into the seed range, so a seed near 2^64 - 1 never overflows the generator."""
    return (int(seed) + int(offset)) % SEED_RANGE


def prepare_noise(latent: dict, samples: torch.Tensor, seed: int) -> torch.Tensor:
    """KSampler's noise for ``seed`` (CPU generator, honours ``batch_index``)."""
    return comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))


def _input_specs(node_class) -> dict[str, tuple]:
    spec = node_class.INPUT_TYPES()
    out = {}
    for section in ("required", "optional"):
        for name, value in spec.get(section, {}).items():
            out[name] = (value[0], value[1] if len(value) > 1 else {})
    return out


EXPECTED_TYPES = {"BOOLEAN": "a boolean (true or false)", "INT": "a whole number", "FLOAT": "a number"}


def _described(value) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    return f"{type(value).__name__} {value!r}"


def wrong_type(name: str, kind, value) -> str | None:
    """The message for a BOOLEAN / INT / FLOAT widget value of the wrong type (a string "false", a boolean for a
    number, a fraction for a whole number), naming the input and the type it takes; None when the type is right.
    ComfyUI converts such values with ``bool()`` / ``int()`` / ``float()``, so "false" would count as true."""
    if kind not in EXPECTED_TYPES:
        return None
    if kind == "BOOLEAN":
        right = isinstance(value, bool)
    elif isinstance(value, bool):
        right = False
    elif kind == "INT":
        right = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    else:
        right = isinstance(value, (int, float))
    return None if right else f"{name}: expected {EXPECTED_TYPES[kind]}, got {_described(value)}"


class RefusedValue(str):
    """A widget value of the wrong type, left in a prompt by :func:`check_prompt_types` for ComfyUI's own
    validation: converting it to the widget's type raises the message naming the input, so the prompt is refused
    before it runs (as a value ComfyUI cannot convert). It stays a string for the server's JSON error reply."""

    def __new__(cls, value, message: str):
        refused = super().__new__(cls, value if isinstance(value, str) else json.dumps(value))
        refused.message = message
        return refused

    def _refuse(self, *args):
        raise ValueError(self.message)

    __bool__ = __int__ = __float__ = __index__ = _refuse


def check_prompt_types(json_data: dict, node_classes: dict) -> dict:
    """The server's on-prompt hook (POST /prompt, before validation): every BOOLEAN, INT or FLOAT widget value of
    the pack's nodes (``node_classes``: class_type -> class) sent with the wrong type becomes a
    :class:`RefusedValue`, so validation refuses the prompt naming the input. Other values are left alone."""
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    if not isinstance(prompt, dict):
        return json_data
    for node in prompt.values():
        node_class = node_classes.get(node.get("class_type")) if isinstance(node, dict) else None
        inputs = node.get("inputs") if node_class is not None else None
        if not isinstance(inputs, dict):
            continue
        for name, (kind, _) in _input_specs(node_class).items():
            value = inputs.get(name)
            if isinstance(value, dict) and "__value__" in value:
                value = value["__value__"]
            if value is None or isinstance(value, list):
                continue  # absent, or a link
            message = wrong_type(name, kind, value)
            if message is not None:
                inputs[name] = RefusedValue(value, message)
    return json_data


def check_widget_values(node_class, values: dict) -> None:
    """What the host does not check for V3 nodes: a Combo value must be one of its options (an API call or a
    hand-edited workflow can send anything), a BOOLEAN / INT / FLOAT value must have its type, and a FLOAT must be
    finite (JSON allows NaN). The error names the input and lists what is accepted."""
    for name, (kind, options) in _input_specs(node_class).items():
        if name not in values or values[name] is None:
            continue
        value = values[name]
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
            continue  # a link, resolved by the executor
        message = wrong_type(name, kind, value)
        if message is not None:
            raise ValueError(message)
        choices = kind if isinstance(kind, list) else options.get("options") if kind == "COMBO" else None
        if choices is not None and value not in choices:
            raise ValueError(f"{name}: {value!r} is not one of the accepted values: {', '.join(map(str, choices))}")
        if kind == "FLOAT":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                raise ValueError(f"{name} must be a finite number, got {value!r}")


def validated(execute):
    """Decorator for a node's ``execute`` (under ``@classmethod``): :func:`check_widget_values` first (inputs
    taken as ``**options`` are checked by name too)."""
    signature = inspect.signature(execute)
    keywords = [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]

    @functools.wraps(execute)
    def wrapper(cls, *args, **kwargs):
        values = signature.bind(cls, *args, **kwargs).arguments
        for name in keywords:  # execute(cls, ..., **options): the options are inputs too
            values = {**values, **values.pop(name, {})}
        check_widget_values(cls, values)
        return execute(cls, *args, **kwargs)
    return wrapper


def check_interrupt() -> None:
    comfy.model_management.throw_exception_if_processing_interrupted()


class SamplingProgress:
    """One progress bar (with latent previews) over several sampler runs of one node."""

    def __init__(self, model, total_steps: int):
        self.total = max(int(total_steps), 1)
        self.done = 0
        self.pbar = comfy.utils.ProgressBar(self.total)
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
        self.disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED

    def callback(self) -> Callable:
        offset = self.done

        def callback(step, x0, x, total_steps):
            preview = None
            if self.previewer is not None:
                preview = self.previewer.decode_latent_to_preview_image("JPEG", x0)
            self.pbar.update_absolute(min(offset + step + 1, self.total), self.total, preview)
        return callback

    def advance(self, steps: int) -> None:
        self.done += int(steps)
        self.pbar.update_absolute(min(self.done, self.total), self.total)

    def show(self, x0: torch.Tensor) -> None:
        """The bar at the steps done so far, with ``x0``'s latent preview (a step that counts no work itself)."""
        preview = None
        if self.previewer is not None:
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0)
        self.pbar.update_absolute(min(self.done, self.total), self.total, preview)


def image_to_rgb(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """IMAGE [B,H,W,C] -> [B,H,W,3]: RGBA drops alpha, greyscale is repeated."""
    if image.ndim != 4:
        raise ValueError(f"{name} must be an IMAGE tensor [batch, height, width, channels], got shape {tuple(image.shape)}")
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels == 4:
        return image[..., :3]
    if channels == 1:
        return image.expand(-1, -1, -1, 3)
    raise ValueError(f"{name} has {channels} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)")


def check_finite_mask(mask: torch.Tensor | None, name: str) -> None:
    """A mask with NaN or infinite values (a NaN would turn the result into NaN silently) is refused by name."""
    if mask is not None and not bool(torch.isfinite(mask).all()):
        raise ValueError(f"{name}: it has NaN or infinite values; a mask holds weights from 0 to 1")


def check_image_latent(shape: tuple, method: str) -> None:
    """``method`` works on image latents [batch, channels, height, width]; a video (5-D) or other latent is refused
    before any work, naming the latent."""
    if len(shape) != 4:
        raise ValueError(f"latent: {method} works on image latents [batch, channels, height, width]; this sampler's "
                         f"latent has shape {tuple(shape)}" + (" (a video latent)" if len(shape) == 5 else ""))


def mask_to_batch(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """MASK [H,W] or [B,H,W] (or [B,1,H,W]) -> [B,H,W]; NaN or infinite values are refused."""
    check_finite_mask(mask, name)
    if mask.ndim == 2:
        return mask.unsqueeze(0)
    if mask.ndim == 4 and mask.shape[1] == 1:
        return mask[:, 0]
    if mask.ndim != 3:
        raise ValueError(f"{name} must be a MASK [batch, height, width], got shape {tuple(mask.shape)}")
    return mask


def check_multiple(name: str, value: int, unit: int, what: str = "pixels", *, positive: bool = False,
                   zero: str | None = None) -> None:
    """A size input must be a multiple of ``unit`` ``what`` (``positive``: at least one unit; ``zero``: 0 is
    accepted too, meaning ``zero``); the ValueError names the input, e.g. "stride must be a positive multiple of
    8 pixels, got 12"."""
    if zero is not None and value == 0:
        return
    if value % unit or ((positive or zero is not None) and value < unit):
        accepted = f"0 ({zero}) or " if zero is not None else ""
        size = "positive " if positive or zero is not None else ""
        raise ValueError(f"{name} must be {accepted}a {size}multiple of {unit} {what}, got {value}")
