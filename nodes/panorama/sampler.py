"""The panorama KSAMPLER function behind both sampler forms (:func:`panorama_sampler`).

It wraps the sampler's model (the CFG'd denoiser) in :class:`~.tiled_model.TiledModel` and runs any k-diffusion
sampler on it through the toolkit's run scaffold (``sampling.SegmentedSampling``: one progress bar counting the
windows, previews, interrupts, the last step relayed to the outer callback).
"""
from __future__ import annotations

import comfy.model_management
import comfy.model_sampling
import comfy.samplers

from ...guidance import panorama
from ..toolkit import gradients, host, lpips_model, sampling
from . import window_conds
from .config import LATENT_PX, LPIPS_SIZES, METHOD, UNET_EXACT, PanoramaConfig
from .tiled_model import TiledModel, patch_cells, plan


def panorama_sampler(config: PanoramaConfig) -> comfy.samplers.KSAMPLER:
    """A SAMPLER running SyncDiffusion (MultiDiffusion with sync_weight 0) around ``config.sampler_name``."""
    config.validate()

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = dict(extra_args or {})
        host.check_finite_mask(extra_args.get("denoise_mask"), "noise_mask (of the sampler's latent)")
        base_model = model.inner_model.inner_model
        latent_format = base_model.latent_format
        flow = isinstance(base_model.model_sampling, comfy.model_sampling.CONST)
        windows, anchor = plan(config, x.shape[-2], x.shape[-1], latent_format,
                               patch_cells(base_model.diffusion_model))
        conds = window_conds.WindowConditioning(base_model, windows, x.shape, LATENT_PX)
        steps = len(sigmas) - 1
        sync_steps = [i for i in range(steps) if config.syncing()
                      and panorama.syncs_at(i, config.sync_steps, config.sync_every)]
        # the bar counts windows: every step denoises each window once, a sync step's gradient pass the others
        run = sampling.SegmentedSampling(config.sampler_name, model, sigmas, extra_args, callback,
                                         steps * len(windows) + len(sync_steps) * (len(windows) - 1))

        def on_batch(count: int) -> None:
            host.check_interrupt()
            run.advance(count)

        denoiser = decoder = distance = None
        try:
            scaler = None
            if sync_steps and len(windows) > 1:
                window = windows[0]
                batch = config.sync_batch * x.shape[0]
                config.decoder_spec.check_fit(batch, (window.height, window.width))
                distance = lpips_model.LPIPSDistance(lpips_model.load_lpips(config.lpips_net),
                                                     LPIPS_SIZES[config.lpips_size])
                decoder = config.decoder_spec.build(latent_format, batch, (window.height, window.width))
                ratio = config.decoder_spec.ratio
                scaler = config.decoder_spec.scaler(3 * window.height * ratio * window.width * ratio)
                denoiser = gradients.DifferentiableDenoiser(model, extra_args, METHOD)
                if config.unet_jacobian != UNET_EXACT:
                    denoiser.use_identity()  # approximate: d x0 / d x = I, no UNet backward
            tiled = TiledModel(model, sigmas, windows, anchor, config, flow, on_batch, conds, denoiser, decoder,
                               distance, latent_format, scaler)
            x = run.run_counting(x, tiled)
        finally:
            conds.close()
            if denoiser is not None:
                denoiser.close()
            if decoder is not None:
                decoder.close()
            if distance is not None:
                distance.close()
                comfy.model_management.soft_empty_cache()
        run.finish()
        return x

    return comfy.samplers.KSAMPLER(sample)
