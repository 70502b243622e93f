"""CLIP semantic guidance (after SDG): the OpenCLIP Loader node and a MODEL patch that steers any sampler towards a
text, a reference image's content or its style (docs/methods/semantic.md).

The open_clip model itself (pack-owned, frozen) and its offline loading live in the toolkit
(``nodes/toolkit/open_clip_model.py``). The patch is a post-CFG function on ``model.clone()``: at the guided
steps it decodes the post-CFG x0 through a pack-owned decoder copy, scores views of it with CLIP, and moves x0
down the loss gradient (no UNet Jacobian). The decoder copy, the CLIP placement and the targets live for one
sampling run: an OUTER_SAMPLE wrapper builds them before the run and releases them after it. Neither the
decoder nor CLIP is ever stored in ``model_options`` (``clone()`` deep-copies it): the patch holds a
:class:`SemanticGuidance` whose deep copy is itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from comfy_api.latest import io

import comfy.model_sampling
import comfy.patcher_extension
import folder_paths

from ..guidance import checks, semantic
from .toolkit import gradients, guard, host, log, open_clip_model
from .toolkit.open_clip_model import CLIP_PRECISIONS, DEFAULT_ARCHITECTURE, DEFAULT_PRETRAINED, FOLDER, OpenCLIP

CATEGORY = "guided_synthesis/semantic"
LOG = log.logger("semantic")
DOWNSCALED = "downscaled latent"
SEMANTIC_DECODERS = tuple(gradients.DECODERS) + (DOWNSCALED,)
WRAPPER_KEY = "guided_synthesis_semantic"
METHOD = "CLIP Semantic Guidance"
OPEN_CLIP = io.Custom("GS_OPEN_CLIP")

# The guidance options are declared once: each is one schema input (:func:`method_inputs`, defaults and choices as
# the named constants below) and the SemanticConfig field of the same name; the node builds its config from its
# inputs by name (:func:`config_from_inputs`). Adding an option: its input, its field, its test.
DEFAULT_TEXT = ""
DEFAULT_TEXT_WEIGHT = 0.3
DEFAULT_IMAGE_WEIGHT = 0.3
DEFAULT_IMAGE_LOSS = "content"
DEFAULT_CUTOUTS = 4
DEFAULT_START_PERCENT = 0.2
DEFAULT_END_PERCENT = 0.7
DEFAULT_EVERY = 1
DEFAULT_DECODER = "auto"
DEFAULT_STEP_MODE = "normalised"
DEFAULT_PRECISION = "auto"  # the OpenCLIP Loader's
DEFAULT_DOWNLOAD = False


class OpenCLIPLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GS_OpenCLIPLoader",
            display_name="OpenCLIP Loader",
            category=CATEGORY,
            description="Loads an open_clip model (image and text towers) for CLIP Semantic Guidance, from a local "
                        "file in models/clip_guidance; it downloads only when 'download' is switched on.",
            inputs=[
                io.Combo.Input("architecture", options=open_clip_model.architectures(), default=DEFAULT_ARCHITECTURE,
                               tooltip="The open_clip architecture the checkpoint was saved from (ViT-B-32 is "
                                       "small and fast; larger towers cost more per guided step)."),
                io.Combo.Input("checkpoint", options=folder_paths.get_filename_list(FOLDER),
                               tooltip="open_clip weights in models/clip_guidance: safetensors, or an open_clip "
                                       ".bin/.pt read weights-only (never fully unpickled). Ignored when download "
                                       "is on."),
                io.Combo.Input("precision", options=list(CLIP_PRECISIONS), default=DEFAULT_PRECISION,
                               tooltip="CLIP's weights: auto (bf16 on GPUs that support it, else fp32), fp32, "
                                       "bf16, or fp16 (user-selected; may lose small gradients). Losses are fp32."),
                io.Boolean.Input("download", default=DEFAULT_DOWNLOAD,
                                 tooltip="Off (default): no network, the checkpoint file is used. On: fetch the "
                                         "'pretrained' weights from the Hugging Face Hub into models/clip_guidance "
                                         "(HF_HUB_OFFLINE is honoured)."),
                io.String.Input("pretrained", default=DEFAULT_PRETRAINED,
                                tooltip="The open_clip pretrained tag to download (only used when download is "
                                        "on), e.g. laion2b_s34b_b79k for ViT-B-32."),
            ],
            outputs=[OPEN_CLIP.Output(display_name="CLIP_MODEL",
                                      tooltip="The open_clip model, tokenizer and preprocessing for guidance.")],
        )

    @classmethod
    def execute(cls, architecture, checkpoint=None, precision=DEFAULT_PRECISION, download=DEFAULT_DOWNLOAD,
                pretrained=DEFAULT_PRETRAINED) -> io.NodeOutput:
        if not download:  # a missing file names the folder and the file it expects (before the list check)
            open_clip_model.checkpoint_path(architecture, checkpoint)
        return cls._load(architecture, checkpoint, precision, download, pretrained)

    @classmethod
    @host.validated
    def _load(cls, architecture, checkpoint, precision, download, pretrained) -> io.NodeOutput:
        return io.NodeOutput(open_clip_model.load_open_clip(architecture, checkpoint, precision, download, pretrained))


# ----------------------------------------------------------------------------------------------
# The guidance patch


class _Run:
    """What one sampling run needs: the decoder copy, the gate, the targets; released after the run."""

    def __init__(self, levels: torch.Tensor, gate: set[int]):
        self.levels = levels.detach().float().cpu()
        self.gate = gate
        self.done: set[int] = set()
        self.decoder = None
        self.scaler: gradients.LossScaler | None = None
        self.flow = False
        self.warned_paper = False
        self.latent_format = None
        self.text = None
        self.content = None
        self.grams = None
        self.guard = guard.StepGuard(METHOD)


class SemanticGuidance:
    """Post-CFG function (``fn(args) -> denoised``) and OUTER_SAMPLE wrapper of CLIP semantic guidance.

    Immutable settings plus the current run's state; its deep copy is itself, so it may sit in model_options.
    """

    def __init__(self, clip: OpenCLIP, vae, decoder: str, text: str, text_weight: float, image_weight: float,
                 image_loss: str, reference: torch.Tensor | None, mask: torch.Tensor | None, cutouts: int,
                 sigma_start: float, sigma_end: float, every: int, step_mode: str):
        self.clip, self.text, self.image_loss = clip, text, image_loss
        self.downscaled = decoder == DOWNSCALED
        self.spec = gradients.LossDecoderSpec(vae, "auto" if self.downscaled else decoder, "auto",
                                              method=METHOD,
                                              advice="Choose the 'taesd' or 'downscaled latent' decoder, or lower "
                                                     "the output size or batch.")
        self.text_weight = float(text_weight) if text else 0.0
        self.image_weight = float(image_weight) if reference is not None else 0.0
        self.reference, self.mask = reference, mask
        self.cutouts, self.every, self.step_mode = int(cutouts), int(every), step_mode
        self.sigma_start, self.sigma_end = sigma_start, sigma_end
        self.run: _Run | None = None
        self._depth = 0

    def __deepcopy__(self, memo):
        return self

    @property
    def active(self) -> bool:
        return self.text_weight != 0.0 or self.image_weight != 0.0

    @property
    def total_weight(self) -> float:
        return self.text_weight + self.image_weight

    @property
    def uses_content(self) -> bool:
        return self.image_weight != 0.0 and self.image_loss in ("content", "both")

    @property
    def uses_style(self) -> bool:
        return self.image_weight != 0.0 and self.image_loss in ("style", "both")

    # --- run lifetime -------------------------------------------------------------------------

    def outer_sample(self, executor, *args, **kwargs):
        """OUTER_SAMPLE wrapper: build the run's state before sampling, release it afterwards."""
        noise, sigmas = args[0], args[3]
        guider = executor.class_obj
        self._depth += 1
        try:
            if self._depth == 1:
                base = guider.model_patcher.model
                self.begin(base.latent_format, tuple(noise.shape), sigmas, _is_flow(base))
            return executor(*args, **kwargs)
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.end()

    def begin(self, latent_format, shape: tuple, sigmas: torch.Tensor, flow: bool = False) -> None:
        """Build the run's state for latents of ``shape``; ``flow``: the model is a flow (CONST) model."""
        host.check_image_latent(shape, "CLIP Semantic Guidance")
        self.end()
        run = _Run(sigmas, semantic.gated_indices(sigmas, self.sigma_start, self.sigma_end, self.every))
        run.flow = bool(flow)
        self.run = run
        if not self.active or not run.gate:
            return
        batch, latent_hw = shape[0], tuple(shape[-2:])
        if self.mask is not None:
            checks.check_mask_batch(self.mask.shape[0], batch, "mask")
        if self.reference is not None and self.reference.shape[0] not in (1, batch):
            raise ValueError(f"reference_image has a batch of {self.reference.shape[0]}; expected 1 or {batch} "
                             f"(the latent batch)")
        if self.downscaled:
            latent_hw = tuple(max(1, v // 2) for v in latent_hw)
        run.latent_format = latent_format
        run.decoder = self.spec.build(latent_format, batch, latent_hw)
        reduced = run.decoder.reduced_precision or self.clip.dtype != torch.float32
        elements = 1
        for size in shape[1:]:
            elements *= int(size)
        run.scaler = gradients.LossScaler(semantic.clip_loss_scale(reduced, elements, self.total_weight),
                                          self.spec.method, reduced)
        self.clip.load()
        self._targets(run)

    def end(self) -> None:
        run, self.run = self.run, None
        if run is not None and run.decoder is not None:
            run.decoder.close()
            run.decoder = None

    def _targets(self, run: _Run) -> None:
        """Text embedding, clean reference embeddings and reference Grams, once per run."""
        clip = self.clip
        if self.text_weight:
            run.text = clip.encode_text(self.text)
        if self.reference is not None and self.image_weight:
            with gradients.grad_enabled(), torch.no_grad():
                pixels = gradients.owned(self.reference).movedim(-1, 1).float().to(clip.device)
                embedding, features = clip.features(clip.views(pixels, 0, None), self.uses_style)
                run.content = embedding
                run.grams = [semantic.gram(f) for f in features]

    # --- the post-CFG function ----------------------------------------------------------------

    def __call__(self, args: dict) -> torch.Tensor:
        denoised = args["denoised"]
        if not self.active:
            return denoised
        levels = args["model_options"].get("transformer_options", {}).get("sample_sigmas")
        if levels is None:
            return denoised
        sigma = args["sigma"]
        run = self.run
        if run is None or run.levels.shape != levels.shape or not torch.allclose(run.levels, levels.float().cpu()):
            # called outside a guider's run (no OUTER_SAMPLE): begin one here; the next begin releases it
            self.begin(args["model"].latent_format, tuple(denoised.shape), levels, _is_flow(args["model"]))
            run = self.run
        index = semantic.sigma_step_index(float(sigma.reshape(-1)[0]), run.levels)
        if index is None or index not in run.gate or index in run.done:
            return denoised  # outside the window, a skipped step, or a later evaluation of a guided step
        run.done.add(index)
        host.check_interrupt()
        if self.step_mode == "paper" and run.flow and float(sigma.max()) >= 1.0:
            if not run.warned_paper:
                run.warned_paper = True
                LOG.warning("CLIP Semantic Guidance: the paper step is undefined at sigma 1 on a flow model (pure "
                            "noise: sigma/(1-sigma) is infinite); that step is left unguided. Start the window "
                            "later (start_percent) or use the normalised step.")
            return denoised
        grad = self.gradient(run, denoised, index)
        if grad is None:
            return denoised  # the gradient stayed non-finite: the scaler skipped the step (warned once)
        weight = self.total_weight if self.step_mode == "normalised" else 1.0
        # at cfg 1 ComfyUI runs no unconditional pass (args["uncond"] is None) and hands over zeros as
        # uncond_denoised: there is no CFG correction, and the step falls back on rms(input - x0)
        uncond = args.get("uncond_denoised") if args.get("uncond") is not None else None
        weights = None
        if self.mask is not None and self.step_mode == "normalised":
            weights = semantic.mask_weights(gradients.owned(self.mask).float().unsqueeze(1), grad.shape[-2:])
            weights = weights.to(denoised.device)
        guided = semantic.guided_x0(denoised, grad.to(denoised.device), weight, sigma.to(denoised.device),
                                    self.step_mode, args.get("cond_denoised"), uncond, noisy=args.get("input"),
                                    flow=run.flow, weights=weights)
        return run.guard.apply(guided, denoised, what=f"guided step at sigma {float(sigma.max()):.4g}")

    def gradient(self, run: _Run, denoised: torch.Tensor, index: int) -> torch.Tensor | None:
        """dL/dx0 of the weighted CLIP loss of the decoded x0 (through the decoder copy only), summed over the
        batch; zero on latent cells outside the mask. None when it stays non-finite (run.scaler: dynamic loss
        scaling, an fp32 decoder pass, then a skip). Checks for an interrupt before the decode, before CLIP and
        before the backward."""
        clip = self.clip
        batch = denoised.shape[0]
        decoder = run.decoder
        with gradients.grad_enabled():
            x0 = gradients.owned(denoised).float().requires_grad_(True)
            mask = None if self.mask is None else gradients.owned(self.mask).float().unsqueeze(1)

            def loss_fn() -> torch.Tensor:
                host.check_interrupt()
                image = gradients.decode_for_loss(decoder, x0, run.latent_format, pooled=self.downscaled)
                if mask is not None:
                    image = semantic.masked_for_loss(image, F.interpolate(
                        mask.to(image.device), size=image.shape[-2:], mode="bilinear", align_corners=False))
                generator = torch.Generator().manual_seed(1_000_003 * (index + 1))
                views = clip.views(image, self.cutouts, generator)
                count = views.shape[0] // batch
                host.check_interrupt()
                embeddings, features = clip.features(views, self.uses_style)
                content = semantic.repeat_views(run.content, count, batch) if self.uses_content else None
                text_weight = self.text_weight if run.text is not None else 0.0
                loss = semantic.text_image_loss(embeddings, run.text, content, batch, text_weight,
                                                self.image_weight)
                if self.uses_style:
                    grams = [semantic.repeat_views(g, count, batch) for g in run.grams]
                    loss = loss + self.image_weight * semantic.view_mean(
                        semantic.style_loss(features, grams, relative=True), batch)
                host.check_interrupt()
                return loss.sum()

            full = decoder.full_precision if decoder.reduced_precision else None
            grads = run.scaler.gradient(loss_fn, [x0], full, what="CLIP-guided step")
            if grads is None:
                return None
            grad = grads[0]
            if mask is not None:
                grad = grad * semantic.latent_mask(mask.to(grad.device), grad.shape[-2:])
        return grad.detach()


def _is_flow(base_model) -> bool:
    """Whether a BaseModel samples as a flow model (ComfyUI's CONST: x = (1 - sigma) x0 + sigma noise)."""
    return isinstance(getattr(base_model, "model_sampling", None), comfy.model_sampling.CONST)


@dataclass
class SemanticConfig:
    """CLIP Semantic Guidance's options (built from the node's inputs: :func:`config_from_inputs`)."""

    text: str
    text_weight: float
    image_weight: float
    image_loss: str
    cutouts: int
    start_percent: float
    end_percent: float
    every: int
    decoder: str
    step_mode: str

    def validate(self) -> None:
        if self.start_percent > self.end_percent:
            raise ValueError(f"start_percent ({self.start_percent}) must not be larger than end_percent "
                             f"({self.end_percent})")
        if self.text_weight < 0 or self.image_weight < 0:
            raise ValueError("text_weight and image_weight must not be negative")


def method_inputs() -> list:
    """The guidance options, after model, vae and clip_model (their order is the node's widget order: keep it)."""
    return [
        io.String.Input("text", multiline=True, default=DEFAULT_TEXT,
                        tooltip="Text to steer towards (CLIP's spherical distance to its embedding). Empty: "
                                "no text guidance."),
        io.Float.Input("text_weight", default=DEFAULT_TEXT_WEIGHT, min=0.0, max=100.0, step=0.01,
                       tooltip="Strength of the text guidance (loss: theta^2/2, theta the angle between "
                               "the CLIP embeddings of the decoded x0 and the text). normalised step: the "
                               "step's size as a fraction of the CFG correction's (0.1-1). paper step: the "
                               "loss's factor in x0 - sigma_ve^2 * dL/dx0. SDG's weights (160) do not carry "
                               "over: another loss, and x0 in latent space through the VAE instead of "
                               "SDG's pixel x_t (README: what the weights mean)."),
        io.Float.Input("image_weight", default=DEFAULT_IMAGE_WEIGHT, min=0.0, max=100.0, step=0.01,
                       tooltip="Strength of the reference-image guidance, in text_weight's units "
                               "(content: theta^2/2 to the reference's embedding; style: the relative Gram "
                               "loss, about 1 for unrelated images). Ignored without a reference_image. "
                               "SDG's weights (100) do not carry over; its style loss is 1e10 x a Gram MSE."),
        io.Combo.Input("image_loss", options=list(semantic.IMAGE_LOSSES), default=DEFAULT_IMAGE_LOSS,
                       tooltip="content: the reference's CLIP embedding; style: Gram matrices of "
                               "early/middle CLIP layers (per image), each layer's error relative to the "
                               "reference Gram's size, so every layer counts equally (SDG weights layers "
                               "by their Gram's size); both: their sum."),
        io.Int.Input("cutouts", default=DEFAULT_CUTOUTS, min=0, max=64,
                     tooltip="Random square crops CLIP scores per guided step (steadier guidance, costs "
                             "CLIP passes). 0: one resize of the whole image."),
        io.Float.Input("start_percent", default=DEFAULT_START_PERCENT, min=0.0, max=1.0, step=0.01,
                       tooltip="Guidance starts at this point of the model's noise schedule (0 = pure "
                               "noise), as ControlNet's start_percent."),
        io.Float.Input("end_percent", default=DEFAULT_END_PERCENT, min=0.0, max=1.0, step=0.01,
                       tooltip="Guidance ends at this point of the noise schedule (1 = clean)."),
        io.Int.Input("every", default=DEFAULT_EVERY, min=1, max=100,
                     tooltip="Guide every k-th sampler step inside the window (steps are counted by the "
                             "sampler's sigmas, so Heun-type samplers guide once per step)."),
        io.Combo.Input("decoder", options=list(SEMANTIC_DECODERS), default=DEFAULT_DECODER,
                       tooltip="How x0 is decoded for the loss: the VAE's decoder in its own (auto) or a "
                               "chosen precision (fp16 user-selected), taesd (fast approximate decoder "
                               "from models/vae_approx), or 'downscaled latent' (the VAE on a 2x pooled "
                               "latent: about 4x cheaper). Below fp32 the loss is scaled so its gradient "
                               "does not underflow, lowered when it overflows; a step whose gradient stays "
                               "non-finite is skipped with a warning."),
        io.Combo.Input("step_mode", options=list(semantic.STEP_MODES), default=DEFAULT_STEP_MODE,
                       tooltip="normalised: the step has weight x the CFG correction's size, at every "
                               "noise level (with a mask: both sizes measured over the mask's cells; at "
                               "cfg 1, e.g. Flux.1 dev, the predicted noise's size instead). "
                               "paper: SDG's unnormalised step x0 - sigma_ve^2 * dL/dx0, sigma_ve = sigma "
                               "(flow models: sigma / (1 - sigma); no step at sigma 1)."),
    ]


def config_from_inputs(inputs: dict) -> SemanticConfig:
    """The config from the node's inputs by name (one left out: the schema's default)."""
    return SemanticConfig(**{spec.id: inputs.get(spec.id, spec.default) for spec in method_inputs()})


class CLIPSemanticGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GS_CLIPSemanticGuidance",
            display_name="CLIP Semantic Guidance",
            category=CATEGORY,
            description="Steers any sampler towards a text, a reference image's content or its style with CLIP "
                        "(after SDG, Liu et al. WACV 2023): at the guided steps the post-CFG x0 is decoded, scored "
                        "with CLIP and moved down the loss gradient. Outputs a patched MODEL.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model; it is cloned, never changed. Other patches on "
                                                "it keep working."),
                io.Vae.Input("vae", tooltip="The model's VAE; the loss decodes x0 through a pack-owned copy of its "
                                            "decoder (or TAESD)."),
                OPEN_CLIP.Input("clip_model", tooltip="An open_clip model from OpenCLIP Loader."),
                *method_inputs(),
                io.Image.Input("reference_image", optional=True,
                               tooltip="The image whose content or style to follow (batch 1, or one per "
                                       "generated image)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Only this region is guided: the loss moves only its pixels, the gradient "
                                      "is zero on latent cells outside it, and the normalised step's size is "
                                      "measured over the mask's cells, so it does not grow as the mask shrinks "
                                      "(batch 1 or per image)."),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The model with CLIP semantic guidance; use it "
                                                                   "with any sampler.")],
        )

    @classmethod
    @host.validated
    def execute(cls, model, vae, clip_model, reference_image=None, mask=None, **options) -> io.NodeOutput:
        """``options``: the inputs of :func:`method_inputs` (:func:`config_from_inputs`)."""
        if not getattr(clip_model, "is_gs_open_clip", False):  # duck-typed: the class may be loaded twice
            raise ValueError("clip_model: connect an OpenCLIP Loader")
        config = config_from_inputs(options)
        config.validate()
        reference = None
        if reference_image is not None:
            reference = host.image_to_rgb(reference_image, "reference_image")
        if mask is not None:
            mask = host.mask_to_batch(mask, "mask")
            if not torch.isfinite(mask).all():
                raise ValueError("mask: it has non-finite values")
        guidance = SemanticGuidance(clip_model, vae, config.decoder, (config.text or "").strip(), config.text_weight,
                                    config.image_weight, config.image_loss, reference, mask, config.cutouts,
                                    host.percent_to_sigma(model, config.start_percent),
                                    host.percent_to_sigma(model, config.end_percent), config.every, config.step_mode)
        patched = model.clone()
        if not guidance.active:
            LOG.info("CLIP Semantic Guidance: nothing to guide (no text, no reference image or zero weights); the "
                     "model is unchanged")
            return io.NodeOutput(patched)
        patched.set_model_sampler_post_cfg_function(guidance)
        patched.set_additional_models(WRAPPER_KEY, [clip_model.patcher])
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY,
                                     guidance.outer_sample)
        return io.NodeOutput(patched)


