"""SyncDiffusion / MultiDiffusion panoramas and Seamless Decode, by job:

- ``config``: the options (:class:`config.PanoramaConfig`, each declared once with its node input);
- ``tiled_model``: the window plan and :class:`tiled_model.TiledModel`, the sampler's model over the windows;
- ``window_conds``: the conditioning cropped per window;
- ``sampler``: :func:`sampler.panorama_sampler`, the KSAMPLER function behind both sampler forms;
- ``sync_diffusion``: the nodes GS_SyncDiffusion and GS_SyncDiffusionSampler;
- ``seamless_decode``: the tiled decode and the node GS_SeamlessDecode;
- ``panorama_view``: the 360-degree viewer's UI output.

The math is in ``guidance/panorama.py``.
"""
