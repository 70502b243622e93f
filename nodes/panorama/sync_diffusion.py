"""The two SyncDiffusion nodes: the full sampler (GS_SyncDiffusion) and the SAMPLER form for SamplerCustom
(GS_SyncDiffusionSampler). Both take the options of :mod:`.config` and run :func:`.sampler.panorama_sampler`."""
from __future__ import annotations

from comfy_api.latest import io

from ..toolkit import host, lpips_model, sampling
from . import config as options
from . import panorama_view
from .config import CATEGORY, LATENT_PX, PanoramaConfig
from .sampler import panorama_sampler
from .tiled_model import patch_cells, plan


def _checked_sampler(config: PanoramaConfig):
    """The SAMPLER for ``config`` (validated), once the LPIPS file is found when the run syncs."""
    if config.syncing():
        lpips_model.trunk_file(config.lpips_net)
    return panorama_sampler(config)


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
                options.vae_input(),
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
                options.sampler_input("euler or ddim (with ddim_uniform) is the reference's DDIM and exact. Other "
                                      "samplers step on the window-averaged x0 (see README)."),
                io.Combo.Input("scheduler", options=host.SCHEDULER_NAMES, default="ddim_uniform",
                               tooltip="Noise schedule; ddim_uniform is the reference's DDIM spacing."),
                *options.method_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="The panorama latent; decode it with Seamless Decode.")],
        )

    @classmethod
    @host.validated
    def execute(cls, model, positive, negative, width, height, batch_size, seed, steps, cfg, scheduler,
                **inputs) -> io.NodeOutput:
        host.check_multiple("width", width, LATENT_PX)
        host.check_multiple("height", height, LATENT_PX)
        config = PanoramaConfig.from_inputs(inputs)
        latent_format = model.get_model_object("latent_format")
        config.validate()
        plan(config, height // LATENT_PX, width // LATENT_PX, latent_format,  # input errors before any work
             patch_cells(model.get_model_object("diffusion_model")))
        sampler = _checked_sampler(config)
        out = sampling.sample_from_empty(model, sampler, positive, negative, seed, steps, cfg, config.sampler_name,
                                         scheduler, batch_size, height, width, LATENT_PX)
        return io.NodeOutput({"samples": out},
                             ui=panorama_view.latent_ui(out, latent_format) if config.loop else None)


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
                options.sampler_input("Sampler run on the window-averaged model (euler / ddim: the reference, "
                                      "exact)."),
                options.vae_input(),
                *options.method_inputs(),
            ],
            outputs=[io.Sampler.Output(tooltip="Connect to SamplerCustom's or SamplerCustomAdvanced's sampler.")],
        )

    @classmethod
    @host.validated
    def execute(cls, **inputs) -> io.NodeOutput:
        return io.NodeOutput(_checked_sampler(PanoramaConfig.from_inputs(inputs)))
