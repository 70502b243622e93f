"""GradOP+ nodes: the stroke-guided sampler and its SAMPLER form for SamplerCustom(Advanced).

Both run the same KSAMPLER function (:func:`gradop_sampler`): it splits the sigma schedule at
the optimisation levels, runs the chosen k-diffusion sampler on each segment and, in between,
optimises the VP latent against the strokes through a pack-owned decoder (``guidance/gradop.py``
holds the math). No UNet gradient is taken, so no weight wrappers are needed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.model_sampling
import comfy.sample
import comfy.samplers
import comfy.utils

from ..guidance import gradop, sdedit
from . import gradients, host

CATEGORY = "guided_synthesis/gradop"
_log = logging.getLogger(__name__)

# decoder choice -> dtype of the pack-owned decoder copy (None: the VAE's own dtype)
DECODERS = {
    "auto": None,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,  # user-selected only; loss scaling keeps its gradient from underflowing
    "taesd": None,
}


# "checkpointed": the decoder copy keeps only its blocks' inputs for backward and recomputes each block
# then (same result, about a third of the memory, about one more decoder forward per Adam step);
# "auto" checkpoints when the estimated activations exceed half of the free memory on the VAE device.
DECODER_MEMORY = ("auto", "full", "checkpointed")
# Extra peak bytes per output pixel of one optimisation step through an SD-family KL decoder in fp32
# (make bench, measured op by op: 1.39 GiB at 256x256, 5.63 GiB at 512x512); half for 16-bit decoders.
KL_DECODER_BYTES_PER_PIXEL = 23_000
# The same, checkpointed (measured: 0.44-0.47 GiB at 256x256, 1.75 GiB at 512x512 in fp32).
KL_DECODER_CHECKPOINTED_BYTES_PER_PIXEL = 7_200


def decoder_fit(batch: int, height: int, width: int, bits: int, free_bytes: float) -> None:
    """Stop before sampling when even the checkpointed decoder cannot fit: the error gives the estimate and the
    largest output (same aspect ratio) that fits. ``height``/``width`` are the decoded image's pixels."""
    per_pixel = KL_DECODER_CHECKPOINTED_BYTES_PER_PIXEL * bits / 32
    needed = per_pixel * batch * height * width
    if needed <= free_bytes:
        return
    scale = (free_bytes / needed) ** 0.5
    fit_w, fit_h = int(width * scale) // 8 * 8, int(height * scale) // 8 * 8
    largest = (f"about {fit_w}x{fit_h} pixels" if fit_w >= 8 and fit_h >= 8
               else "none at this batch size")
    raise ValueError(
        f"GradOP+: an output of {width}x{height} pixels (batch {batch}) needs about {needed / 2 ** 30:.1f} GiB for the "
        f"optimisation's decoder even checkpointed, and ComfyUI reports {free_bytes / 2 ** 30:.1f} GiB free; the "
        f"largest output that fits is {largest}. Lower width/height or batch_size, or use loss_resolution 'half' "
        f"or decoder 'taesd'.")


def use_checkpointing(choice: str, estimated_bytes: float, free_bytes: float) -> bool:
    """Whether the decoder copy runs checkpointed: as chosen, or for 'auto' when the estimate needs more
    than half of the free memory."""
    if choice not in DECODER_MEMORY:
        raise ValueError(f"decoder_memory must be one of {DECODER_MEMORY}, got {choice!r}")
    if choice != "auto":
        return choice == "checkpointed"
    return estimated_bytes > 0.5 * free_bytes


# "half": decode a 2x average-pooled latent (a quarter of the decoder's work); the blur discards
# that detail anyway (docs/methods/gradop.md section 6, approximate).
LOSS_RESOLUTIONS = ("full", "half")


@dataclass
class GradOPConfig:
    """Everything one GradOP+/GradOP sampler run needs besides the model and the schedule."""

    vae: object
    strokes: torch.Tensor  # IMAGE [B,H,W,3]
    mask: torch.Tensor | None  # MASK [B,H,W] or None
    sampler_name: str = "euler"
    mode: str = gradop.MODES[0]
    strength: float = 0.8
    iterative_steps: int = 3
    grad_steps: int = 12
    learning_rate: float = 0.1
    painting: str = "gaussian blur"
    gamma: float = 1e-3
    decoder: str = "auto"
    loss_resolution: str = "full"
    decoder_memory: str = "auto"
    collect_images: bool = False  # the node form keeps decode(z*) per iteration for its IMAGE output
    optimised_images: list[torch.Tensor] = field(default_factory=list)  # filled per iteration, [B,H,W,3]

    def validate(self) -> None:
        gradop.check_strength(self.strength)
        if self.mode not in gradop.MODES:
            raise ValueError(f"mode must be one of {gradop.MODES}, got {self.mode!r}")
        if self.painting not in gradop.PAINTING_FUNCTIONS:
            raise ValueError(f"painting_function must be one of {gradop.PAINTING_FUNCTIONS}, got {self.painting!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {tuple(DECODERS)}, got {self.decoder!r}")
        if self.decoder_memory not in DECODER_MEMORY:
            raise ValueError(f"decoder_memory must be one of {DECODER_MEMORY}, got {self.decoder_memory!r}")
        if self.loss_resolution not in LOSS_RESOLUTIONS:
            raise ValueError(f"loss_resolution must be one of {LOSS_RESOLUTIONS}, got {self.loss_resolution!r}")
        if self.grad_steps < 0:
            raise ValueError(f"grad_steps must be 0 or more, got {self.grad_steps}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.mask is not None:
            sdedit.check_mask_size(tuple(self.mask.shape[-2:]), tuple(self.strokes.shape[1:3]), "mask", "strokes")
            sdedit.check_mask_batch(self.mask.shape[0], self.strokes.shape[0], "mask")

    def total_grad_steps(self) -> int:
        return self.grad_steps * (self.iterative_steps if self.mode == gradop.MODES[0] else 1)


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
    height, width = (8 * size for size in loss_latent_size(config, latent_shape))
    target = gradop.resize_image(config.strokes.movedim(-1, 1).float(), height, width)
    target = _match_batch(target, latent_shape[0], "strokes").to(device)
    mask = None
    if config.mask is not None:
        mask = gradop.resize_image(host.mask_to_batch(config.mask).unsqueeze(1).float(), height, width)
        mask = _match_batch(mask, latent_shape[0], "mask").to(device)
    return target, mask


def decoder_memory_estimate(config: GradOPConfig, loss_latent_shape) -> tuple[float, float]:
    """(bytes the full KL decoder copy's activations need, bytes free on the VAE device); raises when even the
    checkpointed copy cannot fit (:func:`decoder_fit`). TAESD is small and not estimated."""
    if config.decoder == "taesd" or not config.grad_steps:
        return 0.0, float("inf")
    batch, height, width = loss_latent_shape[0], loss_latent_shape[-2], loss_latent_shape[-1]
    bits = torch.finfo(DECODERS[config.decoder] or config.vae.vae_dtype).bits
    estimate = KL_DECODER_BYTES_PER_PIXEL * batch * height * width * 64 * bits / 32
    free = comfy.model_management.get_free_memory(config.vae.device)
    decoder_fit(batch, height * 8, width * 8, bits, free)
    return estimate, free


def make_decoder(config: GradOPConfig, latent_format, loss_latent_shape):
    """The pack-owned decoder copy for the optimisation (checkpointed as config.decoder_memory says)."""
    if config.decoder == "taesd":  # small: checkpointed only when asked
        return gradients.TAESDDecoder(latent_format, checkpointed=config.decoder_memory == "checkpointed")
    estimate, free = decoder_memory_estimate(config, loss_latent_shape)
    checkpointed = use_checkpointing(config.decoder_memory, estimate, free)
    if config.decoder_memory == "auto" and checkpointed:
        _log.info("GradOP+: decoder activations need about %.1f GiB, %.1f GiB free: checkpointing the "
                  "decoder copy (same result, slower)", estimate / 2 ** 30, free / 2 ** 30)
    decoder = gradients.DifferentiableDecoder(config.vae, DECODERS[config.decoder], checkpointed=checkpointed)
    if decoder.checkpointed_blocks:
        _log.info("GradOP+: decoder copy checkpointed (%d blocks recomputed in backward)", decoder.checkpointed_blocks)
    return decoder


def _seeded_noise(like: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(host.derived_seed(seed, 0))
    return torch.randn(like.shape, generator=generator, dtype=torch.float32).to(like)


def gradop_sampler(config: GradOPConfig) -> comfy.samplers.KSAMPLER:
    """A SAMPLER running GradOP+ (or the GradOP reconstruction) around ``config.sampler_name``."""
    config.validate()
    inner = comfy.samplers.sampler_object(config.sampler_name)

    def run_segment(model, x, sigmas, start, end, extra_args, segment, progress, callback_state):
        if end <= start:
            return x
        args = dict(extra_args)
        if segment:  # ancestral/SDE samplers: a fresh noise stream per segment, not the same one again
            args["seed"] = host.derived_seed(extra_args.get("seed", 0) or 0, segment)
        step_callback = progress.callback()

        def callback(d):
            callback_state["last"] = dict(d, i=d["i"] + start)
            step_callback(d["i"], d["denoised"], d["x"], None)

        x = inner.sampler_function(model, x, sigmas[start:end + 1], extra_args=args, callback=callback,
                                   disable=True, **inner.extra_options)
        progress.advance(end - start)
        return x

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        guider = model.inner_model
        base_model = guider.inner_model
        latent_format = base_model.latent_format
        flow = isinstance(base_model.model_sampling, comfy.model_sampling.CONST)
        steps = len(sigmas) - 1
        levels = gradop.optimisation_indices(steps, config.strength, config.iterative_steps)
        plus = config.mode == gradop.MODES[0]
        sampler_steps = steps if plus else steps + (steps - levels[0])
        progress = host.SamplingProgress(guider.model_patcher, sampler_steps + config.total_grad_steps())
        seed = int(extra_args.get("seed", 0) or 0)
        callback_state: dict = {}
        loss_shape = (x.shape[0], *loss_latent_size(config, x.shape))
        decoder_memory_estimate(config, loss_shape)  # stop now, before any step, when it cannot fit
        target, mask = stroke_target(config, x.shape, x.device)
        height, width = target.shape[-2:]
        reduced = config.decoder != "taesd" and (DECODERS[config.decoder] or config.vae.vae_dtype) != torch.float32
        loss_scale = gradop.default_loss_scale(reduced, 3 * height * width)

        decoder = make_decoder(config, latent_format, loss_shape) if config.grad_steps else None
        half = config.loss_resolution == "half"

        def decode(v):
            return decoder.decode_model_space(torch.nn.functional.avg_pool2d(v, 2) if half else v, latent_format,
                                              clamp=True)

        try:
            # The palette ('median + palette') is a constant of the loss: built from an owned copy outside
            # inference mode, or autograd refuses to save it for backward.
            with gradients.grad_enabled():
                painting = gradop.painting_function(config.painting, height, width, gradients.owned(target))

            def optimise(z, sigma, iteration, anchor=None):
                def on_step(step, loss):
                    host.check_interrupt()
                    progress.advance(1)

                result = gradop.optimise_strokes(
                    z, target, decode, painting,
                    config.grad_steps, lr=config.learning_rate, mask=mask, anchor=anchor,
                    gamma=config.gamma if anchor is not None else 0.0, loss_scale=loss_scale, on_step=on_step)
                _log.info("%s iteration %d at sigma %.4f: painting loss %.5f -> %.5f", config.mode, iteration + 1,
                          sigma, result.losses[0], result.losses[-1])
                if config.collect_images:
                    config.optimised_images.append(result.image.movedim(1, -1).clamp(0, 1).cpu())
                return result.z.to(x.dtype)

            if plus:
                bounds = [0, *levels, steps]
                for segment, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
                    x = run_segment(model, x, sigmas, start, end, extra_args, segment, progress, callback_state)
                    if end in levels and config.grad_steps:
                        iteration = levels.index(end)
                        sigma = float(sigmas[end])
                        z = optimise(gradop.to_vp(x, sigma, flow), sigma, iteration)
                        x = gradop.renoise(z, _seeded_noise(x, host.derived_seed(seed, 1 + iteration)), sigma,
                                           flow)
            else:
                x = run_segment(model, x, sigmas, 0, steps, extra_args, 0, progress, callback_state)
                start = levels[0]
                sigma = float(sigmas[start])
                if config.grad_steps:
                    x = optimise(x, float(sigmas[-1]), 0, anchor=x)
                x = gradop.renoise(x, _seeded_noise(x, host.derived_seed(seed, 1)), sigma, flow)
                x = run_segment(model, x, sigmas, start, steps, extra_args, 1, progress, callback_state)
        finally:
            if decoder is not None:
                decoder.close()
        if callback is not None and "last" in callback_state:
            callback(callback_state["last"])  # SamplerCustom's denoised_output reads the last x0
        return x

    return comfy.samplers.KSAMPLER(sample)


# --- node inputs shared by both forms ---------------------------------------------------

def _method_inputs() -> list:
    return [
        io.Vae.Input("vae", tooltip="The VAE whose decoder the optimisation runs through (ignored for "
                                    "decoder 'taesd', except for its latent size)."),
        io.Image.Input("strokes", tooltip="The coarse colour painting to follow. RGBA drops alpha, greyscale is "
                                          "repeated; any size (it is resized to the output size, with a log note)."),
        io.Float.Input("strength", default=0.8, min=0.01, max=1.0, step=0.01,
                       tooltip="Where the optimisation starts: after sampler step int(steps*(1-strength)), as the "
                               "reference does (0.8 with 50 ddim_uniform steps: t = 781, 761, 741). Higher: the "
                               "strokes shape the image earlier and more strongly."),
        io.Int.Input("iterative_steps", default=3, min=1, max=50,
                     tooltip="GradOP+: how many consecutive sampler steps are followed by an optimisation "
                             "(paper advice: 2-5). Ignored by GradOP mode."),
        io.Int.Input("grad_steps", default=12, min=0, max=500,
                     tooltip="Adam steps per optimisation (paper advice: 8-16; GradOP mode: the total, the "
                             "reconstruction uses 50). 0 turns the optimisation off: plain sampling."),
        io.Float.Input("learning_rate", default=0.1, min=0.0001, max=10.0, step=0.001, round=0.0001,
                       tooltip="Adam learning rate (reference 0.1). Each Adam step moves a latent value by about "
                               "this much, so learning_rate x grad_steps is the real strength of the guidance."),
        io.Combo.Input("painting_function", options=list(gradop.PAINTING_FUNCTIONS), default="gaussian blur",
                       tooltip="f, what makes the decoded image comparable with the strokes. gaussian blur: the "
                               "reference (kernel 35, sigma 7 at 512 px, scaled with the size). median: edge-"
                               "preserving. median + palette: also snaps colours to the strokes' palette (more "
                               "faithful, slower)."),
        io.Combo.Input("decoder", options=list(DECODERS), default="auto",
                       tooltip="Decoder used inside the optimisation (a private copy; your VAE is untouched). "
                               "auto: the VAE's own precision. fp32: as the reference. bf16/fp16: faster and "
                               "half the memory (the loss is scaled so gradients do not underflow). taesd: the "
                               "fast TAESD decoder from models/vae_approx (taesd_decoder / taesdxl_decoder), "
                               "much cheaper, approximate."),
        io.Combo.Input("loss_resolution", options=list(LOSS_RESOLUTIONS), default="full",
                       tooltip="full: the reference. half: decode a 2x pooled latent inside the optimisation, a "
                               "quarter of the decoder work (the blur discards that detail anyway); approximate."),
        io.Combo.Input("mode", options=list(gradop.MODES), default=gradop.MODES[0],
                       tooltip="GradOP+: the paper's released method (optimise during sampling). GradOP "
                               "(reconstruction): the paper's base method, never released, rebuilt from its "
                               "description: a text-only sample, optimised with a proximity term, then SDEdit "
                               "from the strength level."),
        io.Float.Input("gamma", default=0.001, min=0.0, max=100.0, step=0.0001, round=0.00001,
                       tooltip="GradOP mode only: weight of the proximity term gamma * mean((z - z_text)^2) "
                               "that keeps the optimised latent near the text-only sample."),
        io.Mask.Input("mask", optional=True,
                      tooltip="Only pixels inside the mask (1) enter the painting loss; elsewhere the strokes "
                              "are ignored. Same size as 'strokes'."),
    ]


def _memory_input():
    # last among the widgets, so workflows saved before it existed keep their widget values in place
    return io.Combo.Input("decoder_memory", options=list(DECODER_MEMORY), default="auto", optional=True,
                          tooltip="Memory of the optimisation's decoder copy. full: keep all activations for "
                                  "backward (SD VAE, fp32: about 5.5 GiB extra at 512x512, 4x that at 1024x1024). "
                                  "checkpointed: keep only each block's input and recompute it in backward: "
                                  "the same result with about a third of the memory, slower. auto: checkpointed "
                                  "when the full activations would need more than half of the free memory.")


def _config(vae, strokes, mask, sampler_name, strength, iterative_steps, grad_steps, learning_rate,
            painting_function, decoder, loss_resolution, mode, gamma, decoder_memory="auto") -> GradOPConfig:
    return GradOPConfig(vae=vae, strokes=host.image_to_rgb(strokes, "strokes"),
                        mask=None if mask is None else host.mask_to_batch(mask, "mask"), sampler_name=sampler_name,
                        mode=mode, strength=strength, iterative_steps=iterative_steps, grad_steps=grad_steps,
                        learning_rate=learning_rate, painting=painting_function, gamma=gamma, decoder=decoder,
                        loss_resolution=loss_resolution, decoder_memory=decoder_memory)


class GradOPPlusSampler(io.ComfyNode):
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
                io.Combo.Input("sampler_name", options=host.SAMPLER_NAMES, default="euler",
                               tooltip="Sampler between optimisations. euler or ddim is the reference's DDIM; "
                                       "multistep samplers restart their history at each optimisation."),
                io.Combo.Input("scheduler", options=host.SCHEDULER_NAMES, default="ddim_uniform",
                               tooltip="Noise schedule. ddim_uniform is the reference's DDIM spacing."),
                *_method_inputs(),
                io.Int.Input("width", default=0, min=0, max=16384, step=8,
                             tooltip="Output width in pixels (a multiple of 8); 0 = the strokes' width, rounded "
                                     "down to a multiple of 8."),
                io.Int.Input("height", default=0, min=0, max=16384, step=8,
                             tooltip="Output height in pixels (a multiple of 8); 0 = the strokes' height."),
                io.Int.Input("batch_size", default=1, min=1, max=64,
                             tooltip="Images per stroke painting (each with its own noise)."),
                _memory_input(),
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
    def execute(cls, model, positive, negative, seed, steps, cfg, sampler_name, scheduler, vae, strokes,
                strength, iterative_steps, grad_steps, learning_rate, painting_function, decoder, loss_resolution,
                mode, gamma, width, height, batch_size, mask=None, decoder_memory="auto") -> io.NodeOutput:
        config = _config(vae, strokes, mask, sampler_name, strength, iterative_steps, grad_steps, learning_rate,
                         painting_function, decoder, loss_resolution, mode, gamma, decoder_memory)
        config.collect_images = True
        width, height = output_size(config.strokes, width, height)
        latent_format = model.get_model_object("latent_format")
        batch = config.strokes.shape[0] * batch_size
        samples = torch.zeros(batch, latent_format.latent_channels, height // 8, width // 8)
        samples = comfy.sample.fix_empty_latent_channels(model, samples)
        sigmas = host.schedule_fn(model, sampler_name, scheduler)(steps)
        noise = host.prepare_noise({}, samples, seed)
        sampler = gradop_sampler(config)
        out = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, samples,
                                         disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        if config.optimised_images:
            images = torch.cat(config.optimised_images, dim=0)
        else:
            images = stroke_target(config, samples.shape, "cpu")[0].movedim(1, -1)
        return io.NodeOutput({"samples": out}, images)


def output_size(strokes: torch.Tensor, width: int, height: int) -> tuple[int, int]:
    """(width, height) of the output: the given size or the strokes' size, as multiples of 8."""
    stroke_h, stroke_w = strokes.shape[1:3]
    for name, value in (("width", width), ("height", height)):
        if value % 8:
            raise ValueError(f"{name} must be a multiple of 8 (or 0 for the strokes' size), got {value}")
    width = width or stroke_w // 8 * 8
    height = height or stroke_h // 8 * 8
    if width < 8 or height < 8:
        raise ValueError(f"strokes are {stroke_w}x{stroke_h}; the output needs at least 8x8 pixels")
    if (width, height) != (stroke_w, stroke_h):
        _log.warning("GradOP+: strokes resized from %dx%d to %dx%d (the output size)", stroke_w, stroke_h,
                     width, height)
    return width, height


class GradOPPlusSamplerObject(io.ComfyNode):
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
                io.Combo.Input("sampler_name", options=host.SAMPLER_NAMES, default="euler",
                               tooltip="Sampler run between the optimisations (euler / ddim: the reference)."),
                *_method_inputs(),
                _memory_input(),
            ],
            outputs=[io.Sampler.Output(tooltip="Connect to SamplerCustom's or SamplerCustomAdvanced's sampler.")],
        )

    @classmethod
    @host.validated
    def execute(cls, sampler_name, vae, strokes, strength, iterative_steps, grad_steps, learning_rate,
                painting_function, decoder, loss_resolution, mode, gamma, mask=None,
                decoder_memory="auto") -> io.NodeOutput:
        config = _config(vae, strokes, mask, sampler_name, strength, iterative_steps, grad_steps, learning_rate,
                         painting_function, decoder, loss_resolution, mode, gamma, decoder_memory)
        return io.NodeOutput(gradop_sampler(config))


NODES = [GradOPPlusSampler, GradOPPlusSamplerObject]
