"""GradOP+ nodes: the stroke-guided sampler and its SAMPLER form for SamplerCustom(Advanced).

Both run the same KSAMPLER function (:func:`gradop_sampler`), built on the gradient toolkit: the
chosen k-diffusion sampler runs on the segments between the optimisation levels
(:class:`sampling.SegmentedSampling`) and, in between, the VP latent is optimised against the strokes
through the loss decoder (:class:`gradients.LossDecoderSpec`) inside ``gradients.grad_enabled()``
(``guidance/gradop.py`` holds the math). No UNet gradient is taken, so no weight wrappers are needed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from comfy_api.latest import io

import comfy.model_sampling
import comfy.sample
import comfy.samplers
import comfy.utils

from ..guidance import checks, gradop
from .toolkit import gradients, guard, host, sampling, log

CATEGORY = "guided_synthesis/gradop"
LOG = log.logger("gradop")
METHOD = "GradOP+"
FIT_ADVICE = "Lower width/height or batch_size, or use loss_resolution 'half' or decoder 'taesd'."

# "half": decode a 2x average-pooled latent (a quarter of the decoder's work); the blur discards
# that detail anyway (docs/methods/gradop.md section 6, approximate; gradients.decode_for_loss).
LOSS_RESOLUTIONS = ("full", "half")

# The method's options are declared once: each is one schema input (:func:`method_inputs`, defaults and choices
# as the named constants below) and the GradOPConfig field of the same name; both nodes build their config from
# their inputs by name (:func:`config_from_inputs`). Adding an option: its input, its field, its test.
DEFAULT_SAMPLER = "euler"
DEFAULT_STRENGTH = 0.8
DEFAULT_ITERATIVE_STEPS = 3
DEFAULT_GRAD_STEPS = 12
DEFAULT_LEARNING_RATE = 0.1
DEFAULT_PAINTING = "gaussian blur"
DEFAULT_DECODER = "auto"
DEFAULT_LOSS_RESOLUTION = "full"
DEFAULT_MODE = gradop.GRADOP_PLUS
DEFAULT_GAMMA = 0.001
DEFAULT_DECODER_MEMORY = "auto"
FIELDS = {"painting_function": "painting"}  # schema input -> GradOPConfig field, where the names differ


@dataclass
class GradOPConfig:
    """Everything one GradOP+/GradOP sampler run needs besides the model and the schedule (built from the node's
    inputs: :func:`config_from_inputs`)."""

    vae: object
    strokes: torch.Tensor  # IMAGE [B,H,W,3]
    mask: torch.Tensor | None  # MASK [B,H,W] or None
    sampler_name: str
    mode: str
    strength: float
    iterative_steps: int
    grad_steps: int
    learning_rate: float
    painting: str
    gamma: float
    decoder: str
    loss_resolution: str
    decoder_memory: str
    collect_images: bool = False  # the node form keeps decode(z*) per iteration for its IMAGE output
    optimised_images: list[torch.Tensor] = field(default_factory=list)  # filled per iteration, [B,H,W,3]
    loss_decoder: gradients.LossDecoderSpec | None = field(default=None, init=False)  # set by validate()

    def validate(self) -> None:
        checks.check_strength(self.strength)
        if self.mode not in gradop.MODES:
            raise ValueError(f"mode must be one of {gradop.MODES}, got {self.mode!r}")
        if self.painting not in gradop.PAINTING_FUNCTIONS:
            raise ValueError(f"painting_function must be one of {gradop.PAINTING_FUNCTIONS}, got {self.painting!r}")
        if self.loss_resolution not in LOSS_RESOLUTIONS:
            raise ValueError(f"loss_resolution must be one of {LOSS_RESOLUTIONS}, got {self.loss_resolution!r}")
        if self.grad_steps < 0:
            raise ValueError(f"grad_steps must be 0 or more, got {self.grad_steps}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.mask is not None:
            checks.check_mask_size(tuple(self.mask.shape[-2:]), tuple(self.strokes.shape[1:3]), "mask", "strokes")
            checks.check_mask_batch(self.mask.shape[0], self.strokes.shape[0], "mask")
        self.loss_decoder = gradients.LossDecoderSpec(self.vae, self.decoder, self.decoder_memory, METHOD, FIT_ADVICE)

    def total_grad_steps(self) -> int:
        return self.grad_steps * (self.iterative_steps if self.mode == gradop.GRADOP_PLUS else 1)


def _match_batch(tensor: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if tensor.shape[0] == batch:
        return tensor
    if batch % tensor.shape[0] == 0:
        return tensor.repeat_interleave(batch // tensor.shape[0], dim=0)
    raise ValueError(f"{name} has batch {tensor.shape[0]}, which does not divide the latent batch {batch}")


def loss_latent_size(config: GradOPConfig, latent_shape) -> tuple[int, int]:
    """The latent size the loss decodes: the sampler's, or half of it for loss_resolution 'half'."""
    height, width = latent_shape[-2], latent_shape[-1]
    if config.loss_resolution == "half":
        if height < 2 or width < 2:
            raise ValueError("loss_resolution 'half' needs an output of at least 16x16 pixels")
        return height // 2, width // 2
    return height, width


def stroke_target(config: GradOPConfig, latent_shape, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Strokes (and mask) as [B,3,H,W] / [B,1,H,W] at the size the loss decodes ``latent_shape`` to."""
    height, width = (config.loss_decoder.ratio * size for size in loss_latent_size(config, latent_shape))
    target = gradop.resize_image(config.strokes.movedim(-1, 1).float(), height, width)
    target = _match_batch(target, latent_shape[0], "strokes").to(device)
    mask = None
    if config.mask is not None:
        mask = gradop.resize_image(host.mask_to_batch(config.mask).unsqueeze(1).float(), height, width)
        mask = _match_batch(mask, latent_shape[0], "mask").to(device)
    return target, mask


def _seeded_noise(like: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(host.derived_seed(seed, 0))
    return torch.randn(like.shape, generator=generator, dtype=torch.float32).to(like)


def gradop_sampler(config: GradOPConfig) -> comfy.samplers.KSAMPLER:
    """A SAMPLER running GradOP+ (or the GradOP reconstruction) around ``config.sampler_name``."""
    config.validate()

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        host.check_finite_mask((extra_args or {}).get("denoise_mask"), "noise_mask (of the sampler's latent)")
        base_model = model.inner_model.inner_model
        latent_format = base_model.latent_format
        flow = isinstance(base_model.model_sampling, comfy.model_sampling.CONST)
        steps = len(sigmas) - 1
        levels = gradop.optimisation_indices(steps, config.strength, config.iterative_steps)
        plus = config.mode == gradop.GRADOP_PLUS
        sampler_steps = steps if plus else steps + (steps - levels[0])
        segments = sampling.SegmentedSampling(config.sampler_name, model, sigmas, extra_args, callback,
                                              sampler_steps + config.total_grad_steps())
        seed = segments.seed
        loss_hw = loss_latent_size(config, x.shape)
        if config.grad_steps:  # stop now, before any step, when the decoder cannot fit
            config.loss_decoder.check_fit(x.shape[0], loss_hw)
        target, mask = stroke_target(config, x.shape, x.device)
        height, width = target.shape[-2:]
        scaler = config.loss_decoder.scaler(3 * height * width)  # one per run: back-offs carry over
        half = config.loss_resolution == "half"
        decoder = None
        step_guard = guard.StepGuard(config.mode)  # one per run: reported once

        def decode(v):
            return gradients.decode_for_loss(decoder, v, latent_format, pooled=half)

        try:
            if config.grad_steps:
                decoder = config.loss_decoder.build(latent_format, x.shape[0], loss_hw)
            with gradients.grad_enabled():
                # the loss's constants (target, mask, the 'median + palette' palette) as normal tensors, or
                # autograd refuses to save them for backward
                target = gradients.owned(target)
                mask = None if mask is None else gradients.owned(mask)
                painting = gradop.painting_function(config.painting, height, width, target)

            def optimise(z, sigma, iteration, anchor=None):
                def on_step(step, loss):
                    host.check_interrupt()
                    segments.advance(1)

                def gradient(loss_fn, inputs):
                    return scaler.gradient(loss_fn, inputs, decoder.full_precision if decoder.reduced_precision
                                           else None, what="Adam step")

                with gradients.grad_enabled():
                    result = gradop.optimise_strokes(
                        gradients.owned(z), target, decode, painting, config.grad_steps, lr=config.learning_rate,
                        mask=mask, anchor=None if anchor is None else gradients.owned(anchor),
                        gamma=config.gamma if anchor is not None else 0.0, loss_scale=scaler.initial,
                        on_step=on_step, gradient=gradient)
                LOG.info("%s iteration %d at sigma %.4f: painting loss %.5f -> %.5f", config.mode, iteration + 1,
                          sigma, result.losses[0], result.losses[-1])
                if config.collect_images:
                    config.optimised_images.append(result.image.movedim(1, -1).clamp(0, 1).cpu())
                if result.skipped == config.grad_steps:
                    return None  # no Adam step was taken (the scaler reported why): the iteration is unguided
                return result.z.to(x.dtype)

            if plus:
                bounds = [0, *levels, steps]
                for segment, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
                    x = segments.run(x, start, end, segment)
                    if end in levels and config.grad_steps:
                        iteration = levels.index(end)
                        sigma = float(sigmas[end])
                        z = optimise(gradop.to_vp(x, sigma, flow), sigma, iteration)
                        if z is not None:
                            guided = gradop.renoise(z, _seeded_noise(x, host.derived_seed(seed, 1 + iteration)),
                                                    sigma, flow)
                            x = step_guard.apply(guided, x, what=f"iteration {iteration + 1}")
            else:
                x = segments.run(x, 0, steps, 0)
                start = levels[0]
                sigma = float(sigmas[start])
                if config.grad_steps:
                    z = optimise(x, float(sigmas[-1]), 0, anchor=x)
                    x = x if z is None else step_guard.apply(z, x, what="optimisation")
                x = gradop.renoise(x, _seeded_noise(x, host.derived_seed(seed, 1)), sigma, flow)
                x = segments.run(x, start, steps, 1)
        finally:
            if decoder is not None:
                decoder.close()
        segments.finish()
        return x

    return comfy.samplers.KSAMPLER(sample)


# --- node inputs shared by both forms ---------------------------------------------------

def method_inputs() -> list:
    """The method's inputs, in both nodes' widget order (decoder_memory: :func:`memory_input`, last)."""
    return [
        io.Vae.Input("vae", tooltip="The VAE whose decoder the optimisation runs through (ignored for "
                                    "decoder 'taesd', except for its latent size)."),
        io.Image.Input("strokes", tooltip="The coarse colour painting to follow. RGBA drops alpha, greyscale is "
                                          "repeated; any size (it is resized to the output size, with a log note)."),
        io.Float.Input("strength", default=DEFAULT_STRENGTH, min=0.01, max=1.0, step=0.01,
                       tooltip="Where the optimisation starts: after sampler step int(steps*(1-strength)), as the "
                               "reference does (0.8 with 50 ddim_uniform steps: t = 781, 761, 741). Higher: the "
                               "strokes shape the image earlier and more strongly."),
        io.Int.Input("iterative_steps", default=DEFAULT_ITERATIVE_STEPS, min=1, max=50,
                     tooltip="GradOP+: how many consecutive sampler steps are followed by an optimisation "
                             "(paper advice: 2-5). Ignored by GradOP mode."),
        io.Int.Input("grad_steps", default=DEFAULT_GRAD_STEPS, min=0, max=500,
                     tooltip="Adam steps per optimisation (paper advice: 8-16; GradOP mode: the total, the "
                             "reconstruction uses 50). 0 turns the optimisation off: plain sampling."),
        io.Float.Input("learning_rate", default=DEFAULT_LEARNING_RATE, min=0.0001, max=10.0, step=0.001, round=0.0001,
                       tooltip="Adam learning rate (reference 0.1). Each Adam step moves a latent value by about "
                               "this much, so learning_rate x grad_steps is the real strength of the guidance."),
        io.Combo.Input("painting_function", options=list(gradop.PAINTING_FUNCTIONS), default=DEFAULT_PAINTING,
                       tooltip="f, what makes the decoded image comparable with the strokes. gaussian blur: the "
                               "reference (kernel 35, sigma 7 at 512 px, scaled with the size). median: edge-"
                               "preserving. median + palette: also snaps colours to the strokes' palette (more "
                               "faithful, slower)."),
        io.Combo.Input("decoder", options=list(gradients.DECODERS), default=DEFAULT_DECODER,
                       tooltip="Decoder used inside the optimisation (a private copy; your VAE is untouched). "
                               "auto: the VAE's own precision. fp32: as the reference. bf16/fp16: faster and "
                               "half the memory (the loss is scaled so gradients do not underflow). taesd: the "
                               "fast TAESD decoder from models/vae_approx (taesd_decoder / taesdxl_decoder), "
                               "much cheaper, approximate."),
        io.Combo.Input("loss_resolution", options=list(LOSS_RESOLUTIONS), default=DEFAULT_LOSS_RESOLUTION,
                       tooltip="full: the reference. half: decode a 2x pooled latent inside the optimisation, a "
                               "quarter of the decoder work (the blur discards that detail anyway); approximate."),
        io.Combo.Input("mode", options=list(gradop.MODES), default=DEFAULT_MODE,
                       tooltip="GradOP+: the paper's released method (optimise during sampling). GradOP "
                               "(reconstruction): the paper's base method, never released, rebuilt from its "
                               "description: a text-only sample, optimised with a proximity term, then SDEdit "
                               "from the strength level."),
        io.Float.Input("gamma", default=DEFAULT_GAMMA, min=0.0, max=100.0, step=0.0001, round=0.00001,
                       tooltip="GradOP mode only: weight of the proximity term gamma * mean((z - z_text)^2) "
                               "that keeps the optimised latent near the text-only sample."),
        io.Mask.Input("mask", optional=True,
                      tooltip="Only pixels inside the mask (1) enter the painting loss; elsewhere the strokes "
                              "are ignored. Same size as 'strokes'."),
    ]


def memory_input():
    # last among the widgets, so workflows saved before it existed keep their widget values in place
    return io.Combo.Input("decoder_memory", options=list(gradients.DECODER_MEMORY), default=DEFAULT_DECODER_MEMORY,
                          optional=True,
                          tooltip="Memory of the optimisation's decoder copy. full: keep all activations for "
                                  "backward (SD VAE, fp32: about 5.6 GiB extra at 512x512, 4x that at 1024x1024). "
                                  "checkpointed: keep only each block's input and recompute it in backward: "
                                  "the same result with about a third of the memory, slower. auto: checkpointed "
                                  "when the full activations would need more than half of the free memory.")


def config_from_inputs(inputs: dict) -> GradOPConfig:
    """The run's config from a node's inputs by name: sampler_name and every input of :func:`method_inputs` and
    :func:`memory_input` (an optional one left out: the schema's default), strokes and mask as checked tensors."""
    values = {"sampler_name": inputs["sampler_name"]}
    for spec in (*method_inputs(), memory_input()):
        values[FIELDS.get(spec.id, spec.id)] = inputs.get(spec.id, getattr(spec, "default", None))
    values["strokes"] = host.image_to_rgb(values["strokes"], "strokes")
    if values["mask"] is not None:
        values["mask"] = host.mask_to_batch(values["mask"], "mask")
    return GradOPConfig(**values)


class GradOPPlus(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GS_GradOPPlus",
            display_name="GradOP+ Stroke Sampler",
            category=CATEGORY,
            description="GradOP+ (Singh et al., CVPR 2023): text-to-image sampling that follows a coarse colour "
                        "painting. At a few steps the noisy latent is optimised so the blurred decoded image "
                        "matches the strokes, then re-noised; the result keeps the strokes' colour layout but "
                        "looks realistic, where SDEdit looks like a painting. Any model, size and sampler.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SD1.x, SD2, SDXL, ...)."),
                io.Conditioning.Input("positive", tooltip="What the image should show."),
                io.Conditioning.Input("negative", tooltip="What the image should avoid."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the initial noise and of the re-noising; the same seed gives the "
                                     "same image."),
                io.Int.Input("steps", default=50, min=1, max=10000,
                             tooltip="Sampler steps (the reference: 50). All of them run."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale (reference 7.5)."),
                io.Combo.Input("sampler_name", options=host.SAMPLER_NAMES, default=DEFAULT_SAMPLER,
                               tooltip="Sampler between optimisations. euler or ddim is the reference's DDIM; "
                                       "multistep samplers restart their history at each optimisation."),
                io.Combo.Input("scheduler", options=host.SCHEDULER_NAMES, default="ddim_uniform",
                               tooltip="Noise schedule. ddim_uniform is the reference's DDIM spacing."),
                *method_inputs(),
                io.Int.Input("width", default=0, min=0, max=16384, step=8,
                             tooltip="Output width in pixels (a multiple of 8); 0 = the strokes' width, rounded "
                                     "down to a multiple of 8."),
                io.Int.Input("height", default=0, min=0, max=16384, step=8,
                             tooltip="Output height in pixels (a multiple of 8); 0 = the strokes' height."),
                io.Int.Input("batch_size", default=1, min=1, max=64,
                             tooltip="Images per stroke painting (each with its own noise)."),
                memory_input(),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The result; decode it with VAE Decode."),
                io.Image.Output(display_name="optimised",
                                tooltip="The decoded latent after each optimisation (iteration by iteration, "
                                        "batch inside), to watch the optimisation. Without optimisation: the "
                                        "strokes as the loss saw them."),
            ],
        )

    @classmethod
    @host.validated
    def execute(cls, model, positive, negative, seed, steps, cfg, scheduler, width, height, batch_size,
                **options) -> io.NodeOutput:
        """``options``: sampler_name and the method's inputs (:func:`config_from_inputs`)."""
        config = config_from_inputs(options)
        config.collect_images = True
        width, height = output_size(config.strokes, width, height)
        out = sampling.sample_from_empty(model, gradop_sampler(config), positive, negative, seed, steps, cfg,
                                         config.sampler_name, scheduler, config.strokes.shape[0] * batch_size,
                                         height, width)
        if config.optimised_images:
            images = torch.cat(config.optimised_images, dim=0)
        else:
            images = stroke_target(config, out.shape, "cpu")[0].movedim(1, -1)
        return io.NodeOutput({"samples": out}, images)


def output_size(strokes: torch.Tensor, width: int, height: int) -> tuple[int, int]:
    """(width, height) of the output: the given size or the strokes' size, as multiples of 8."""
    stroke_h, stroke_w = strokes.shape[1:3]
    host.check_multiple("width", width, 8, zero="the strokes' size")
    host.check_multiple("height", height, 8, zero="the strokes' size")
    width = width or stroke_w // 8 * 8
    height = height or stroke_h // 8 * 8
    if width < 8 or height < 8:
        raise ValueError(f"strokes are {stroke_w}x{stroke_h}; the output needs at least 8x8 pixels")
    if (width, height) != (stroke_w, stroke_h):
        LOG.warning("GradOP+: strokes resized from %dx%d to %dx%d (the output size)", stroke_w, stroke_h,
                     width, height)
    return width, height


class GradOPPlusSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GS_GradOPPlusSampler",
            display_name="GradOP+ Sampler (SamplerCustom)",
            category=CATEGORY,
            description="GradOP+ as a SAMPLER for SamplerCustom / SamplerCustomAdvanced, so it composes with "
                        "any guider, LoRA, ControlNet or attention patch. Use an empty latent of the output "
                        "size (or a latent with a noise_mask for stroke-based editing) and ddim_uniform sigmas.",
            inputs=[
                io.Combo.Input("sampler_name", options=host.SAMPLER_NAMES, default=DEFAULT_SAMPLER,
                               tooltip="Sampler run between the optimisations (euler / ddim: the reference)."),
                *method_inputs(),
                memory_input(),
            ],
            outputs=[io.Sampler.Output(tooltip="Connect to SamplerCustom's or SamplerCustomAdvanced's sampler.")],
        )

    @classmethod
    @host.validated
    def execute(cls, **options) -> io.NodeOutput:
        """``options``: sampler_name and the method's inputs (:func:`config_from_inputs`)."""
        return io.NodeOutput(gradop_sampler(config_from_inputs(options)))


