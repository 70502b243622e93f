"""SDEdit nodes: the sampler (image/latent in, optional mask, repeats, strength sweeps) and a
SIGMAS node for SamplerCustom. The strength arithmetic lives in ``guidance/sdedit.py``."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io

import comfy.sample
import comfy.samplers

from ..guidance import checks, sdedit
from .toolkit import host

CATEGORY = "guided_synthesis/sdedit"

# The method's options are declared once: each is one schema input (:func:`method_inputs`, defaults and choices
# as the named constants below) and the SDEditConfig field of the same name; both nodes build their config from
# their inputs by name (:func:`config_from_inputs`). Adding an option: its input, its field, its test.
DEFAULT_STEPS = 30
DEFAULT_CFG = 7.5
DEFAULT_SAMPLER = "euler"
DEFAULT_SCHEDULER = "normal"
DEFAULT_STRENGTH = 0.5
DEFAULT_SEMANTICS = "paper"
DEFAULT_REPEATS = 1
DEFAULT_STRENGTH_SWEEP = ""

_SEMANTICS_TOOLTIP = (
    "How 'strength' picks the start noise level. paper: t0 on the model's own noise schedule "
    "(start at sigma(t0), then 'steps' steps down to 0, Meng et al.). diffusers: img2img, run the last "
    "int(steps*strength) steps of the full schedule (same as KSamplerAdvanced start_at_step). "
    "comfy: KSampler's denoise (the tail of a longer int(steps/strength)-step schedule).")


@dataclass
class SDEditConfig:
    """An SDEdit run's options (built from the node's inputs: :func:`config_from_inputs`)."""

    strength: float
    semantics: str
    repeats: int
    strength_sweep: str

    def strengths(self) -> list[float]:
        """The strengths to run: the sweep's when it is set, else the checked ``strength``."""
        if self.strength_sweep and self.strength_sweep.strip():
            return sdedit.parse_strengths(self.strength_sweep)
        return [checks.check_strength(self.strength)]


def method_inputs(sweep: bool) -> list:
    """strength and semantics (both nodes); with ``sweep``, repeats and strength_sweep too (the sampler node)."""
    inputs = [
        io.Float.Input("strength", default=DEFAULT_STRENGTH, min=0.01, max=1.0, step=0.01,
                       tooltip="SDEdit t0 in (0, 1]: how much noise is added to the guide before denoising. "
                               "Higher is more realistic, lower is more faithful to the guide. "
                               "Stroke paintings: about 0.4-0.6; 1.0 starts from almost pure noise, so the guide barely shows."),
        io.Combo.Input("semantics", options=list(sdedit.SEMANTICS), default=DEFAULT_SEMANTICS,
                       tooltip=_SEMANTICS_TOOLTIP),
    ]
    if sweep:
        inputs += [
            io.Int.Input("repeats", default=DEFAULT_REPEATS, min=1, max=16,
                         tooltip="Repeated SDEdit (the paper's K): noise and denoise the result again this many "
                                 "times. More repeats: more realism, less faithfulness."),
            io.String.Input("strength_sweep", default=DEFAULT_STRENGTH_SWEEP, optional=True,
                            tooltip="Optional comma-separated strengths, e.g. '0.3, 0.5, 0.7'. When set it "
                                    "replaces 'strength' and the output batch holds one result per strength "
                                    "(per input image), all with the same seed, to compare realism and "
                                    "faithfulness."),
        ]
    return inputs


def config_from_inputs(inputs: dict) -> SDEditConfig:
    """The run's config from a node's inputs by name: every input of :func:`method_inputs` (one the node does not
    have or did not send: the schema's default)."""
    return SDEditConfig(**{spec.id: inputs.get(spec.id, spec.default) for spec in method_inputs(sweep=True)})


def scheduler_input() -> io.Combo.Input:
    return io.Combo.Input("scheduler", options=host.SCHEDULER_NAMES, default=DEFAULT_SCHEDULER,
                          tooltip="How the steps are spaced in noise level.")


def sdedit_sigmas(model, sampler_name: str, scheduler: str, steps: int, strength: float,
                  semantics: str) -> torch.Tensor:
    """SIGMAS for one SDEdit run (shared by both nodes)."""
    schedule = host.schedule_fn(model, sampler_name, scheduler)
    time_to_sigma, sigma_to_time = host.time_sigma_maps(model)
    return sdedit.select_sigmas(semantics, strength, schedule(steps), schedule=schedule,
                                time_to_sigma=time_to_sigma, sigma_to_time=sigma_to_time, steps=steps)


class SDEditSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GS_SDEditSigmas",
            display_name="SDEdit Sigmas",
            category=CATEGORY,
            description="The SIGMAS schedule of an SDEdit run at a given strength, for SamplerCustom / "
                        "SamplerCustomAdvanced. Feed it a LATENT of the guide and enable add_noise.",
            inputs=[
                io.Model.Input("model", tooltip="The model whose noise schedule is used."),
                scheduler_input(),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=10000,
                             tooltip="Number of steps of the full schedule (see semantics for how many run)."),
                *method_inputs(sweep=False),
            ],
            outputs=[io.Sigmas.Output(tooltip="Decreasing noise levels ending at 0.")],
        )

    @classmethod
    @host.validated
    def execute(cls, model, scheduler, steps, **options) -> io.NodeOutput:
        """``options``: the inputs of :func:`method_inputs` (strength, semantics)."""
        config = config_from_inputs(options)
        return io.NodeOutput(sdedit_sigmas(model, "euler", scheduler, steps, config.strength, config.semantics))


class SDEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GS_SDEdit",
            display_name="SDEdit Sampler",
            category=CATEGORY,
            description="SDEdit (Meng et al., ICLR 2022): noise a guide (a stroke painting, a photo, a latent) to "
                        "strength t0 and denoise it with the prompt. Optional mask for stroke-based editing "
                        "(outside it the input is kept), repeated SDEdit, and strength sweeps in one batch.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SD1.x, SD2, SDXL, ...)."),
                io.Conditioning.Input("positive", tooltip="What the result should show."),
                io.Conditioning.Input("negative", tooltip="What the result should avoid."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the added noise; the same seed gives the same result."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=10000,
                             tooltip="Sampling steps (see semantics for how many actually run)."),
                io.Float.Input("cfg", default=DEFAULT_CFG, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=host.SAMPLER_NAMES, default=DEFAULT_SAMPLER,
                               tooltip="Any ComfyUI sampler. euler / ddim match the paper's deterministic solver."),
                scheduler_input(),
                *method_inputs(sweep=True),
                io.Image.Input("image", optional=True,
                               tooltip="The guide as an IMAGE (needs 'vae'). Connect either image or latent."),
                io.Vae.Input("vae", optional=True, tooltip="VAE that encodes 'image'."),
                io.Latent.Input("latent", optional=True,
                                tooltip="The guide as a LATENT (instead of 'image'). Its noise_mask, if any, "
                                        "is used when no 'mask' is connected."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Stroke-based editing: 1 = regenerate, 0 = keep the input. Outside the mask "
                                      "the input is re-imposed at every step. Same size as the image "
                                      "(or 8x the latent)."),
            ],
            outputs=[io.Latent.Output(tooltip="The edited latent; decode it with VAE Decode.")],
        )

    @classmethod
    @host.validated
    def execute(cls, model, positive, negative, seed, steps, cfg, sampler_name, scheduler, image=None, vae=None,
                latent=None, mask=None, **options) -> io.NodeOutput:
        """``options``: the inputs of :func:`method_inputs` (:func:`config_from_inputs`)."""
        config = config_from_inputs(options)
        strengths = config.strengths()
        repeats = config.repeats
        guide, noise_mask = _guide_latent(image, vae, latent, mask)
        guide = comfy.sample.fix_empty_latent_channels(model, guide)
        source = latent if latent is not None else {}

        schedules = [sdedit_sigmas(model, sampler_name, scheduler, steps, s, config.semantics) for s in strengths]
        progress = host.SamplingProgress(model, repeats * sum(len(s) - 1 for s in schedules))
        sampler = comfy.samplers.sampler_object(sampler_name)

        results = []
        for sigmas in schedules:
            current = guide
            for repeat in range(repeats):
                host.check_interrupt()
                run_seed = host.derived_seed(seed, repeat)
                noise = host.prepare_noise(source, current, run_seed)
                current = comfy.sample.sample_custom(
                    model, noise, cfg, sampler, sigmas, positive, negative, current, noise_mask=noise_mask,
                    callback=progress.callback(), disable_pbar=progress.disable_pbar, seed=run_seed)
                progress.advance(len(sigmas) - 1)
            results.append(current)

        out = dict(source)  # keep the LATENT's other keys, as KSampler does
        out["samples"] = torch.cat(results, dim=0)
        if len(strengths) > 1:
            out.pop("batch_index", None)
        return io.NodeOutput(out)


def _guide_latent(image, vae, latent, mask) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The guide as a raw latent plus the noise mask ([B,1,H,W] or None); validates the inputs."""
    if image is not None and latent is not None:
        raise ValueError("connect either 'image' or 'latent', not both")
    if image is None and latent is None:
        raise ValueError("connect a guide: 'image' (with 'vae') or 'latent'")
    if image is not None:
        if vae is None:
            raise ValueError("'image' needs a 'vae' to encode it")
        pixels = host.image_to_rgb(image, "image")
        batch, pixel_hw = pixels.shape[0], tuple(pixels.shape[1:3])
        samples = vae.encode(pixels)
    else:
        if not isinstance(latent, dict) or "samples" not in latent:
            raise ValueError("'latent' must be a LATENT")
        samples = latent["samples"]
        batch = samples.shape[0]
        pixel_hw = (samples.shape[-2] * 8, samples.shape[-1] * 8)

    if mask is None:
        noise_mask = latent.get("noise_mask") if latent is not None else None
        host.check_finite_mask(noise_mask, "latent: its noise_mask")
        return samples, noise_mask
    mask = host.mask_to_batch(mask, "mask")
    checks.check_mask_size(tuple(mask.shape[1:]), pixel_hw, "mask", "image" if image is not None else "latent (x8)")
    checks.check_mask_batch(mask.shape[0], batch, "mask")
    if image is not None:
        mask = vae.vae_encode_crop_pixels(mask.unsqueeze(-1))[..., 0]
    return samples, mask.unsqueeze(1).clone()


