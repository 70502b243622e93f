"""The panorama options, each declared once: its config field (name, type, default) in :class:`PanoramaConfig`
and its node input (range, tooltip) below, the default read from the field. Both sampler forms build their
config with :meth:`PanoramaConfig.from_inputs`, so adding an option is one field, one input and its use.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields

from comfy_api.latest import io

from ...guidance import panorama
from ..toolkit import gradients, host, lpips_model

CATEGORY = "guided_synthesis/panorama"
METHOD = "SyncDiffusion"
FIT_ADVICE = "Lower sync_batch or window_size, or use loss_decoder 'taesd'."
LATENT_PX = 8  # pixels per latent cell (SD1/SD2/SDXL/SD3/Flux VAEs)

# choices, named once
UNET_EXACT = "exact"
UNET_NONE = "none (approximate)"
UNET_JACOBIAN = (UNET_EXACT, UNET_NONE)
LPIPS_FULL = "full"
LPIPS_SIZES = {LPIPS_FULL: 1, "1/2 (approximate)": 2, "1/4 (approximate)": 4}  # option -> downscale factor
DECODER_AUTO = "auto"  # gradients.DECODERS / DECODER_MEMORY: the automatic choice
SAMPLER_DEFAULT = "euler"
LPIPS_NET_DEFAULT = "vgg"


@dataclass
class PanoramaConfig:
    """Everything a panorama sampler run needs besides the model and the schedule (sizes in pixels)."""

    vae: object
    sampler_name: str = SAMPLER_DEFAULT
    window_size: int = 0
    stride: int = 128
    sync_weight: float = panorama.DEFAULT_SYNC_WEIGHT
    decay: float = panorama.DEFAULT_DECAY
    sync_steps: int = panorama.DEFAULT_SYNC_STEPS
    sync_every: int = 1
    anchor: int = -1
    lpips_net: str = LPIPS_NET_DEFAULT
    loss_decoder: str = DECODER_AUTO
    unet_jacobian: str = UNET_EXACT
    loop: bool = False
    window_batch: int = 4
    sync_batch: int = 1
    decoder_memory: str = DECODER_AUTO
    lpips_size: str = LPIPS_FULL
    decoder_spec: gradients.LossDecoderSpec | None = field(default=None, init=False)

    @classmethod
    def from_inputs(cls, values: dict) -> PanoramaConfig:
        """The config from a node's input values; an option the node did not send (an optional input of an older
        workflow) keeps its default, and inputs that are not options (model, seed, ...) are left out."""
        names = {item.name for item in fields(cls) if item.init}
        return cls(**{name: value for name, value in values.items() if name in names})

    def validate(self) -> None:
        host.check_multiple("window_size", self.window_size, LATENT_PX, positive=True, zero="by model")
        host.check_multiple("stride", self.stride, LATENT_PX, positive=True)
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


_DEFAULTS = {item.name: item.default for item in fields(PanoramaConfig) if item.default is not MISSING}


def _option(kind, name: str, tooltip: str, **spec):
    """The node input of config option ``name``, its default the config field's."""
    default = _DEFAULTS[name]
    return kind.Input(name, default=float(default) if kind is io.Float else default, tooltip=tooltip, **spec)


# --- node inputs shared by both sampler forms (GS_SyncDiffusion, GS_SyncDiffusionSampler) ------------------

def vae_input():
    return io.Vae.Input("vae", tooltip="The VAE whose decoder the sync loss decodes through (a private copy; ignored "
                                       "for loss_decoder 'taesd').")


def sampler_input(tooltip: str):
    return _option(io.Combo, "sampler_name", tooltip, options=host.SAMPLER_NAMES)


def method_inputs() -> list:
    """The options both forms take, after the VAE (their order is the nodes' widget order: keep it)."""
    return [
        _option(io.Int, "window_size", min=0, max=4096, step=8,
                tooltip="Window side in pixels (a multiple of 8; of 16 on 2x2-patch transformers such as Flux "
                        "and SD3.5). 0 = the model's native size: 512 px for SD1/SD2, 1024 px for SDXL, Flux, "
                        "SD3.5, Chroma, Qwen-Image and Z-Image."),
        _option(io.Int, "stride", min=8, max=4096, step=8,
                tooltip="Distance between windows in pixels (a multiple of 8, of 16 on 2x2-patch transformers; "
                        "at most the window). The "
                        "SyncDiffusion scripts use 128 px (16 latent), MultiDiffusion 64 px. Smaller: more "
                        "windows, smoother, slower."),
        _option(io.Float, "sync_weight", min=0.0, max=1000.0, step=0.5,
                tooltip="SyncDiffusion gradient weight w (reference 20), applied as w*decay^i*(1+sigma^2) "
                        "in sampler space (flow models such as Flux, SD3.5: w*decay^i*((1-sigma)^2+sigma^2)). "
                        "0 = plain MultiDiffusion (no LPIPS, no gradients)."),
        _option(io.Float, "decay", min=0.0, max=1.0, step=0.01,
                tooltip="The weight at step i is sync_weight*decay^i (reference 0.95)."),
        _option(io.Int, "sync_steps", min=0, max=10000,
                tooltip="Sync during the first this many steps (reference script: 10 of 50); after them, "
                        "plain MultiDiffusion."),
        _option(io.Int, "sync_every", min=1, max=1000,
                tooltip="Sync at every k-th step only (1 = every step, the reference). Above 1: an "
                        "approximation that saves time."),
        _option(io.Int, "anchor", min=-1, max=10000,
                tooltip="The window the others are pulled towards: -1 = the middle window (reference), else "
                        "its index in raster order (rows, then columns)."),
        _option(io.Combo, "lpips_net", options=list(lpips_model.NETS),
                tooltip="LPIPS trunk. vgg: the reference. alex / squeeze: faster, approximate. Weights from "
                        "models/lpips (torchvision's vgg16 / alexnet / squeezenet1_1 file) or the torch hub "
                        "cache; never downloaded."),
        _option(io.Combo, "loss_decoder", options=list(gradients.DECODERS),
                tooltip="Decoder inside the sync loss (a private copy). auto: the VAE's precision. fp32: as "
                        "the reference (which autocasts to fp16). bf16/fp16: faster, half the memory. taesd: "
                        "the fast TAESD decoder from models/vae_approx, much cheaper, approximate."),
        _option(io.Combo, "unet_jacobian", options=list(UNET_JACOBIAN),
                tooltip="exact: the gradient flows through the UNet (both CFG branches), as the reference. "
                        "none: approximate, d x0/d x taken as identity; no UNet backward (much less memory "
                        "and time). exact falls back to none with a warning if the model has no backward."),
        _option(io.Boolean, "loop",
                tooltip="360-degree panorama: windows wrap around the right edge to the left, so the two "
                        "edges join. Decode with Seamless Decode (circular). The SyncDiffusion Panorama "
                        "Sampler then shows the latent's rough colours in a 360-degree viewer."),
        _option(io.Int, "window_batch", min=1, max=256,
                tooltip="Windows denoised together in the plain (no gradient) pass: faster, more memory; "
                        "same result."),
        # optional: workflows saved before these options existed run with the defaults
        _option(io.Int, "sync_batch", min=1, max=256, optional=True,
                tooltip="Windows per gradient pass at a sync step (each holds UNet, decoder and LPIPS "
                        "activations: see the README's memory arithmetic); same result."),
        _option(io.Combo, "decoder_memory", options=list(gradients.DECODER_MEMORY), optional=True,
                tooltip="Memory of the loss decoder copy: full, checkpointed (same result, about a third "
                        "of the memory, slower), auto (checkpointed when needed)."),
        _option(io.Combo, "lpips_size", options=list(LPIPS_SIZES), optional=True,
                tooltip="Image size LPIPS compares at. full: the window's decoded size, as the reference. "
                        "1/2, 1/4: the decoded windows are area-averaged down first; the LPIPS network "
                        "costs 4x / 16x less; approximate."),
    ]
