"""The segmented sampler scaffold: a k-diffusion sampler run over slices of one sigma schedule, as one run.

Methods that change x between sampler steps (GradOP+ optimises it at a few levels) build their KSAMPLER
function on :class:`SegmentedSampling`: any sampler (``comfy.samplers.sampler_object(name)``) on
``sigmas[start:end + 1]``, one progress bar with latent previews across all segments and the method's own
steps, an interrupt check before each segment, a fresh noise stream per segment for ancestral and SDE
samplers, and the last step relayed to the outer callback so SamplerCustom's ``denoised_output`` works.
SyncDiffusion runs the whole schedule on its tiled model with :meth:`SegmentedSampling.run_counting` (the bar
counts its windows).
"""
from __future__ import annotations

from typing import Callable

import torch

import comfy.sample
import comfy.samplers
import comfy.utils

from . import host


class SegmentedSampling:
    """Runs ``sampler_name`` over slices of ``sigmas`` inside a KSAMPLER function.

    ``model``, ``sigmas``, ``extra_args`` and ``callback`` are what the KSAMPLER function received;
    ``total_steps`` is the length of the progress bar (sampler steps plus the method's own, see
    :meth:`advance`). Call :meth:`finish` once at the end.
    """

    def __init__(self, sampler_name: str, model, sigmas: torch.Tensor, extra_args: dict | None,
                 callback: Callable[[dict], None] | None, total_steps: int):
        self.sampler = comfy.samplers.sampler_object(sampler_name)
        self.model = model
        self.sigmas = sigmas
        self.extra_args = extra_args or {}
        self.seed = int(self.extra_args.get("seed", 0) or 0)
        self.progress = host.SamplingProgress(model.inner_model.model_patcher, total_steps)
        self._outer_callback = callback
        self._last: dict | None = None

    def run(self, x: torch.Tensor, start: int, end: int, segment: int) -> torch.Tensor:
        """Sample from ``sigmas[start]`` to ``sigmas[end]``; ``segment`` > 0 gives ancestral/SDE samplers the
        seed ``derived_seed(seed, segment)``, a fresh noise stream instead of the same one again."""
        if end <= start:
            return x
        host.check_interrupt()
        args = dict(self.extra_args)
        if segment:
            args["seed"] = host.derived_seed(self.seed, segment)
        step_callback = self.progress.callback()

        def callback(step: dict) -> None:
            self._last = dict(step, i=step["i"] + start)
            step_callback(step["i"], step["denoised"], step["x"], None)

        # a copy: some host samplers write into their sigmas (uni_pc sets the last to 0.001), and a slice would
        # write into the SIGMAS the graph gave us, which ComfyUI's cache may hand to other nodes too
        x = self.sampler.sampler_function(self.model, x, self.sigmas[start:end + 1].clone(), extra_args=args,
                                          callback=callback, disable=True, **self.sampler.extra_options)
        self.progress.advance(end - start)
        return x

    def advance(self, steps: int) -> None:
        """Count the method's own steps (an Adam step, a window) on the same progress bar."""
        self.progress.advance(steps)

    def finish(self) -> None:
        """Relay the last sampler step to the outer callback (SamplerCustom's denoised_output reads its x0)."""
        if self._outer_callback is not None and self._last is not None:
            self._outer_callback(self._last)

    def run_counting(self, x: torch.Tensor, model) -> torch.Tensor:
        """Sample the whole schedule with ``model`` in the place of the sampler's model: a wrapper (a tiled model)
        that counts its own work on the progress bar with :meth:`advance`. Each sampler step shows its preview
        at the count reached so far and adds none itself; :meth:`finish` relays the last step as after
        :meth:`run`."""
        host.check_interrupt()

        def callback(step: dict) -> None:
            self._last = dict(step)
            self.progress.show(step["denoised"])

        return self.sampler.sampler_function(model, x, self.sigmas.clone(), extra_args=dict(self.extra_args),
                                             callback=callback, disable=True, **self.sampler.extra_options)


def sample_from_empty(model, sampler: comfy.samplers.KSAMPLER, positive, negative, seed: int, steps: int, cfg: float,
                      sampler_name: str, scheduler: str, batch: int, height_px: int, width_px: int,
                      latent_px: int = 8) -> torch.Tensor:
    """The full-node recipe of a sampler node that takes no latent (GradOP+, SyncDiffusion): an empty latent of
    ``batch`` x ``height_px`` x ``width_px`` in the model's latent format, KSampler's schedule and noise for
    ``seed``, and ``sampler`` run through ``comfy.sample.sample_custom`` (CFG, conditioning, model patches and
    the host's progress bar as KSampler does them). Returns the sampled latent."""
    latent_format = model.get_model_object("latent_format")
    samples = torch.zeros(batch, latent_format.latent_channels, height_px // latent_px, width_px // latent_px)
    samples = comfy.sample.fix_empty_latent_channels(model, samples)
    sigmas = host.schedule_fn(model, sampler_name, scheduler)(steps)
    noise = host.prepare_noise({}, samples, seed)
    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, samples,
                                      disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
