"""SyncDiffusion / MultiDiffusion panorama nodes through ComfyUI's real executor with the tiny seeded models.

Canvas 96x32 px (12x4 latent), windows 32 px (4 latent), stride 16 px: 5 windows in one row, anchor 2.
(A tiny-UNet call costs about 0.3-0.5 s on a shared CPU whatever its size, so the tests count calls.)
"""
import re

import pytest
import torch

from devkit import graphs
from devkit import harness
from devkit.tolerance import ORACLE, PATHS, assert_close_across_paths

WIDTH, HEIGHT, WINDOW, STRIDE, STEPS = 96, 32, 32, 16, 4
SYNC_EFFECT = 0.05  # the least relative change sync (weight 20, one synced step of three) makes; see below


PANORAMA = graphs.SYNCED_PANORAMA  # this file's panorama: graphs.syncdiffusion's inputs with these
assert (PANORAMA["width"], PANORAMA["height"], PANORAMA["window_size"], PANORAMA["stride"],
        PANORAMA["steps"]) == (WIDTH, HEIGHT, WINDOW, STRIDE, STEPS)


def add_custom(prompt, node_id, key, sampler_node: dict, seed=5, width=WIDTH, height=HEIGHT, steps=STEPS,
               sampler="euler", scheduler="ddim_uniform"):
    prompt[node_id] = sampler_node
    out = graphs.custom_sampling(prompt, node_id, [node_id, 0], steps, seed, width, height, scheduler)
    graphs.capture(prompt, node_id + "c", key, latent=out)


def oracle_node(lpips_file, sync_weight=20.0, sync_steps=2, downscale=1, window=WINDOW):
    return {"class_type": "GS_TestPanoramaOracle", "inputs": {
        "vae": ["1", 2], "window": window // 8, "stride": STRIDE // 8, "sync_weight": sync_weight, "decay": 0.95,
        "sync_steps": sync_steps, "lpips_file": str(lpips_file), "net": "vgg", "downscale": downscale}}


def sampler_node(**overrides) -> dict:
    nodes = {}
    graphs.syncdiffusion_sampler(nodes, "sampler", **{**PANORAMA, **overrides})
    return nodes["sampler"]


def relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_node_and_sampler_match_a_plain_torch_oracle(host, captured, lpips_models):
    """euler in the node form, ddim (ComfyUI's ddim is Euler) in the SAMPLER form, both with ddim_uniform.

    At sync_weight 1 to 1e-5 relative: the sync still moves the result by >1 %. The plain pass is batched
    (window_batch 8); gradient passes go one window at a time, as the oracle's (batched gradients: see the
    next tests). At the reference's weight 20 the step is w (1 + sigma^2) ~ 4000 times the gradient at the
    first step on the random tiny model, so fp32 rounding of the gradient is amplified as much and the latent
    grows to |x| ~ 70: with every window one at a time, as the oracle runs them, node and oracle agree to
    1.6e-5 relative (measured; asserted 5e-5) while the sync changes the result by 50 %."""
    prompt = graphs.base()
    graphs.panorama(prompt, "10", "node", sampler_name="euler", sync_weight=1.0, sync_batch=1)
    add_custom(prompt, "20", "oracle", oracle_node(lpips_models["vgg"], sync_weight=1.0))
    add_custom(prompt, "30", "sampler", sampler_node(sampler_name="ddim", sync_weight=1.0, sync_batch=1))
    graphs.panorama(prompt, "40", "multi", sync_weight=0.0)
    graphs.panorama(prompt, "50", "node_20", sampler_name="euler", sync_weight=20.0, sync_batch=1, window_batch=1)
    add_custom(prompt, "60", "oracle_20", oracle_node(lpips_models["vgg"], sync_weight=20.0))
    host.run(prompt)
    node, oracle, custom = (captured[k] for k in ("node", "oracle", "sampler"))
    assert torch.isfinite(node).all()
    assert relative(node, oracle) < 1e-5, relative(node, oracle)
    assert relative(custom, oracle) < 1e-5, relative(custom, oracle)
    assert relative(captured["multi"], oracle) > 1e-2  # the sync matters at this weight
    assert relative(captured["node_20"], captured["oracle_20"]) < 5e-5
    assert relative(captured["multi"], captured["oracle_20"]) > 0.3


def test_lpips_at_reduced_size_matches_the_oracle_with_block_means(host, captured, lpips_models):
    """lpips_size 1/2: the node equals the oracle that averages each 2x2 block of the decoded windows before
    LPIPS (1e-5); it is an approximation, so it differs from the full-size sync. 1/4 of a 32 px window is
    smaller than VGG runs on: a clear error naming lpips_size."""
    prompt = graphs.base()
    graphs.panorama(prompt, "10", "half", sync_weight=1.0, sync_batch=1, lpips_size="1/2 (approximate)")
    add_custom(prompt, "20", "oracle", oracle_node(lpips_models["vgg"], sync_weight=1.0, downscale=2))
    graphs.panorama(prompt, "30", "full", sync_weight=1.0, sync_batch=1)
    host.run(prompt)
    half, oracle = captured["half"], captured["oracle"]
    assert relative(half, oracle) < 1e-5, relative(half, oracle)
    assert relative(captured["full"], half) > 1e-4
    prompt = graphs.base()
    graphs.panorama(prompt, "10", "quarter", lpips_size="1/4 (approximate)")
    _, server = host.run(prompt, expect_success=False)
    message = host.node_error(server)
    assert "lpips_size" in message and "8 px" in message, message


def test_sync_weight_zero_is_independent_multidiffusion(host, captured, lpips_models):
    prompt = graphs.base()
    graphs.panorama(prompt, "10", "node", sync_weight=0.0)
    add_custom(prompt, "20", "oracle", oracle_node(lpips_models["vgg"], sync_weight=0.0))
    host.run(prompt)
    assert relative(captured["node"], captured["oracle"]) < 1e-5


def test_batched_and_unbatched_windows_agree(host, captured, lpips_models):
    """The plain pass batched (window_batch) equals one window at a time to 1e-5 with the sync on.

    Batched gradient passes (sync_batch) run the same per-item arithmetic, so where the loss is
    differentiable they agree to fp32 rounding, amplified by the step's weight * (1 + sigma^2) (about 4000
    at the first step here): with the decoder's clamp to [0, 1] taken out (by a test-only patch of the
    pack's decoder) the results agree to 1e-5 relative (measured 1e-5; asserted 5e-5). With the clamp, as
    shipped and as the reference does it, about a quarter of the tiny decoder's pixels sit at 0 or 1, and at
    those non-differentiable points (clamp edges, tied max-pool inputs in the LPIPS trunk) rounding picks
    which subgradient flows: the sync's effect then differs by about 1.5 % (asserted 3 %). Both are valid
    SyncDiffusion steps; the difference is not an error in the batching."""
    gradients = harness.test_nodes_module().probes.pack_module("nodes.toolkit.gradients")
    decode = gradients.DifferentiableDecoder.decode_model_space
    results = {}
    for clamp in (True, False):
        prompt = graphs.base()
        graphs.panorama(prompt, "10", "one", window_batch=1, sync_batch=1, steps=2, sync_steps=1)
        graphs.panorama(prompt, "20", "plain_batched", window_batch=3, sync_batch=1, steps=2, sync_steps=1)
        graphs.panorama(prompt, "30", "grad_batched", window_batch=1, sync_batch=3, steps=2, sync_steps=1)
        graphs.panorama(prompt, "40", "multi", window_batch=1, sync_weight=0.0, steps=2, sync_steps=1)
        if not clamp:
            gradients.DifferentiableDecoder.decode_model_space = (
                lambda self, x0, latent_format, clamp=False: decode(self, x0, latent_format, False))
        try:
            host.run(prompt)
        finally:
            gradients.DifferentiableDecoder.decode_model_space = decode
        results[clamp] = dict(captured)
    for clamp, got in results.items():
        one, multi = got["one"], got["multi"]
        assert relative(got["plain_batched"], one) < 1e-5
        effect = float((one - multi).abs().max())
        assert effect > 0.1 * float(one.abs().max())  # the sync moves the result a lot (weight 20)
        if clamp:
            assert float((got["grad_batched"] - one).abs().max()) < 0.03 * effect
        else:
            assert relative(got["grad_batched"], one) < 5e-5


def window_lpips_to_anchor(image: torch.Tensor, lpips_file: str) -> float:
    """Mean LPIPS (random-trunk VGG) between each window's pixels of a decoded panorama and the anchor's."""
    oracle = harness.test_nodes_module().panorama_oracle
    lp = oracle.oracle_lpips("vgg", lpips_file)
    pixels = image.movedim(-1, 1).float() * 2 - 1  # [B,3,H,W]
    lefts = list(range(0, WIDTH - WINDOW + 1, STRIDE))
    anchor = pixels[..., lefts[len(lefts) // 2]:lefts[len(lefts) // 2] + WINDOW]
    with torch.inference_mode(False), torch.no_grad():
        values = [float(lp(pixels[..., left:left + WINDOW].clone(), anchor.clone()).mean())
                  for index, left in enumerate(lefts) if index != len(lefts) // 2]
    return sum(values) / len(values)


def add_decode(prompt, node_id, key, latent, circular=False, tile_size=64, overlap=16):
    prompt[node_id] = {"class_type": "GS_SeamlessDecode", "inputs": {
        "samples": latent, "vae": ["1", 2], "tile_size": tile_size, "overlap": overlap, "circular": circular}}
    graphs.capture(prompt, node_id + "c", key, image=[node_id, 0])


def test_sync_makes_the_windows_closer_to_the_anchor(host, captured, lpips_models):
    prompt = graphs.base()
    graphs.panorama(prompt, "10", "off", sync_weight=0.0, steps=6, sync_steps=4)
    graphs.panorama(prompt, "20", "on", sync_weight=20.0, steps=6, sync_steps=4)
    for node_id, key in (("11", "off"), ("21", "on")):
        prompt[node_id] = {"class_type": "VAEDecode", "inputs": {"samples": [node_id[0] + "0", 0], "vae": ["1", 2]}}
        graphs.capture(prompt, node_id + "c", key + "_image", image=[node_id, 0])
    host.run(prompt)
    off = window_lpips_to_anchor(captured["off_image"], str(lpips_models["vgg"]))
    on = window_lpips_to_anchor(captured["on_image"], str(lpips_models["vgg"]))
    assert on < off, (on, off)


def seams(image: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(the wrap seam |last column - first column|, every interior |column j+1 - column j|), mean over rows."""
    columns = image.float().mean(dim=0)  # [H, W, 3]
    interior = (columns[:, 1:] - columns[:, :-1]).abs().mean(dim=(0, 2))
    return float((columns[:, -1] - columns[:, 0]).abs().mean()), interior


def test_loop_closes_the_seam(host, captured, lpips_models):
    prompt = graphs.base()
    graphs.panorama(prompt, "10", "loop", loop=True, sync_weight=0.0)
    add_decode(prompt, "11", "image", ["10", 0], circular=True)
    host.run(prompt)
    image = captured["image"]
    assert image.shape[1:3] == (HEIGHT, WIDTH)
    seam, interior = seams(image)
    assert seam <= float(interior.max()), (seam, interior)


def blend_oracle(decode, latent: torch.Tensor, tile: int, overlap: int, circular: bool) -> torch.Tensor:
    """Seamless Decode written from its documentation, in float64 with plain loops: ``circular`` pads ``overlap``
    wrapped latent columns on each side (1 when overlap is 0) and crops them after; tiles of ``tile`` latent cells
    start at 0 every ``tile - overlap`` cells, the last one flush with the edge (one tile when it fits); within a
    tile, a pixel's weight is the product of its row and column weights, which rise as (k + 1) / (r + 1) over
    the r = min(overlap, tile / 2) pixels next to an edge shared with another tile and are 1 elsewhere; the
    result is the weighted sum of the decoded tiles over the summed weights, clamped to [0, 1]."""
    pad = max(overlap, 1) if circular else 0
    z = torch.cat([latent[..., latent.shape[-1] - pad:], latent, latent[..., :pad]], -1) if pad else latent

    def spans(n):
        if n <= tile:
            return [(0, n)]
        found, start = [], 0
        while start + tile < n:
            found.append((start, start + tile))
            start += max(1, tile - overlap)
        return found + [(n - tile, n)]

    def weights(n_px, a, b, ramp_px):
        w = torch.ones(b - a, dtype=torch.float64)
        r = min(ramp_px, (b - a) // 2)
        for k in range(r):
            if a > 0:
                w[k] = (k + 1) / (r + 1)
            if b < n_px:
                w[b - a - 1 - k] = (k + 1) / (r + 1)
        return w

    height, width = z.shape[-2:]
    total = weight_sum = None
    for top, bottom in spans(height):
        for left, right in spans(width):
            image = decode(z[..., top:bottom, left:right]).double()
            ratio = image.shape[1] // (bottom - top)
            if total is None:
                total = torch.zeros(image.shape[0], height * ratio, width * ratio, image.shape[-1], dtype=torch.float64)
                weight_sum = torch.zeros(height * ratio, width * ratio, dtype=torch.float64)
            w = (weights(height * ratio, top * ratio, bottom * ratio, overlap * ratio)[:, None]
                 * weights(width * ratio, left * ratio, right * ratio, overlap * ratio)[None, :])
            total[:, top * ratio:bottom * ratio, left * ratio:right * ratio] += image * w[..., None]
            weight_sum[top * ratio:bottom * ratio, left * ratio:right * ratio] += w
    out = total / weight_sum[..., None]
    if pad:
        out = out[:, :, pad * ratio:out.shape[2] - pad * ratio]
    return out.clamp(0, 1)


# tile_size, overlap (px), circular: 2x2 tiles (ramps of 16 and 24 px), wrapped 3 tiles, wrapped in one tile
SEAMLESS_CASES = [(64, 16, False), (64, 24, False), (64, 16, True), (256, 16, True)]


def test_seamless_decode_equals_a_plain_torch_blend_of_the_vae_tiles(host, captured):
    """On the tiny real VAE (whose tiles differ where they overlap), a 96 x 80 px panorama: the node equals
    blend_oracle over the same VAE's tile decodes; one tile covering the latent is the plain VAE Decode; circular
    in one tile is the plain decode of the latent padded by wrap, cropped. The tiles really differ (so the blend
    weights matter) and a blend with another ramp would be caught."""
    tiny = harness.test_nodes_module().tiny
    prompt = graphs.base()
    graphs.empty_latent(prompt, "4", 96, 80)
    prompt["5"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}}
    graphs.capture(prompt, "5c", "latent", latent=["5", 0])
    prompt["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}}
    graphs.capture(prompt, "6c", "plain", image=["6", 0])
    add_decode(prompt, "7", "one", ["5", 0], tile_size=128, overlap=0)
    for index, (tile_size, overlap, circular) in enumerate(SEAMLESS_CASES):
        add_decode(prompt, f"8{index}", f"case{index}", ["5", 0], circular=circular, tile_size=tile_size,
                   overlap=overlap)
    host.run(prompt)
    vae = tiny.tiny_vae(0)
    latent, plain = captured["latent"], captured["plain"].float()

    def decode(z):
        with torch.no_grad():
            return vae.decode(z).float()

    assert_close_across_paths(decode(latent), plain, rtol=1e-5, why=PATHS)  # the oracle's VAE is the graph's
    assert_close_across_paths(captured["one"].float(), plain, rtol=1e-5, why=PATHS)  # one tile: a plain decode
    for index, (tile_size, overlap, circular) in enumerate(SEAMLESS_CASES):
        got = captured[f"case{index}"].float()
        expected = blend_oracle(decode, latent, tile_size // 8, overlap // 8, circular)
        assert_close_across_paths(got, expected, rtol=1e-5, why=ORACLE, what=str(SEAMLESS_CASES[index]))
    wrapped = torch.cat([latent[..., -2:], latent, latent[..., :2]], -1)
    assert_close_across_paths(captured["case3"].float(), decode(wrapped)[:, :, 16:-16], rtol=1e-5, why=PATHS)
    # the comparisons can fail: the tiles disagree where they overlap, and another ramp moves the result
    left, right = decode(latent[..., :8, :8]), decode(latent[..., :8, 4:])
    assert float((left[:, :, 32:] - right[:, :, :32]).abs().max()) > 0.01
    other = blend_oracle(decode, latent, 8, 1, False)
    assert float((other - captured["case0"].float()).abs().max()) > 1e-3


class LocalVAE:
    """A decoder whose output pixel depends on one latent cell only (a fixed 1x1 map, sigmoid, each cell to its
    8x8 pixels): every tile decodes the pixels it shares with another exactly as the whole latent does."""

    def decode(self, z):
        mix = torch.linspace(-1.0, 1.0, 3 * z.shape[1]).view(3, z.shape[1])
        pixels = torch.sigmoid(torch.einsum("oc,bchw->bohw", mix, z.float()))
        return pixels.repeat_interleave(8, -2).repeat_interleave(8, -1).movedim(1, -1)


@pytest.mark.parametrize("tile, overlap, circular", [(8, 2, False), (6, 3, False), (4, 1, False), (8, 2, True),
                                                     (5, 2, True), (8, 0, True), (64, 4, True)])
def test_seamless_decode_with_a_local_decoder_is_the_plain_decode(host, tile, overlap, circular):
    """With a per-cell decoder the tiles agree, so the normalised blend must give the plain decode (2-D tiles,
    ramps of several widths, circular padding and its crop); an unnormalised blend, a misplaced tile or a crop
    off by a column would not."""
    seamless = harness.loaded_module(f"{harness.PACK_NAME}.nodes.panorama.seamless_decode")
    latent = torch.randn(2, 4, 10, 13, generator=torch.Generator().manual_seed(0)) * 2
    vae = LocalVAE()
    got = seamless.seamless_decode(vae, latent, tile, overlap, circular)
    assert_close_across_paths(got, vae.decode(latent), rtol=1e-5, why=PATHS)  # blend of equal tiles


BAD = [
    ({"width": 24}, "window_size"),
    ({"height": 36}, "height must be a multiple of 8"),
    ({"stride": 48}, "stride"),
    ({"stride": 12}, "stride"),
    ({"anchor": 20}, "anchor"),
    ({"window_size": 36}, "window_size"),
]


@pytest.mark.parametrize("overrides,name", BAD, ids=[n + str(i) for i, (_, n) in enumerate(BAD)])
def test_bad_inputs_name_the_input(host, lpips_models, overrides, name):
    prompt = graphs.base()
    graphs.panorama(prompt, "10", "x", **overrides)
    _, server = host.run(prompt, expect_success=False)
    message = host.node_error(server)
    assert name in message, message


def test_a_missing_lpips_file_says_which_file_to_put_where(host, lpips_models, tmp_path, monkeypatch):
    import folder_paths
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    saved = list(folder_paths.folder_names_and_paths["lpips"][0])
    folder_paths.folder_names_and_paths["lpips"][0].clear()
    folder_paths.filename_list_cache.pop("lpips", None)
    try:
        prompt = graphs.base()
        graphs.panorama(prompt, "10", "x", lpips_net="alex")
        _, server = host.run(prompt, expect_success=False)
    finally:
        folder_paths.folder_names_and_paths["lpips"][0].extend(saved)
        folder_paths.filename_list_cache.pop("lpips", None)
    message = host.node_error(server)
    assert "lpips_net" in message and "alexnet-owt-7be5be79.pth" in message and "models/lpips" in message, message


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "euler_ancestral", "euler_cfg_pp", "uni_pc"])
def test_other_samplers_run_with_sync(host, captured, lpips_models, sampler):
    """Second-order, multistep, ancestral, CFG++ (its post-CFG hook sees the merged uncond) and UniPC: each
    synced result is compared with the same sampler's sync-off run (same seed), which it must differ from by a
    clear relative amount (a sampler whose hook lost the sync would equal it); euler, the oracle's own sampler,
    also equals the plain-torch oracle (one window per pass, as the oracle runs them)."""
    prompt = graphs.base()
    settings = dict(sampler_name=sampler, steps=3, sync_steps=1, scheduler="normal")
    if sampler == "euler":
        settings.update(window_batch=1, sync_batch=1)
        add_custom(prompt, "30", "oracle", oracle_node(lpips_models["vgg"], sync_steps=1), steps=3,
                   scheduler="normal")
    graphs.panorama(prompt, "10", "sync", **settings)
    graphs.panorama(prompt, "20", "off", **dict(settings, sync_weight=0.0))
    host.run(prompt)
    synced, off = captured["sync"], captured["off"]
    assert torch.isfinite(synced).all()
    moved = relative(synced, off)
    print(f"{sampler}: the sync moves the result by {moved:.2f} of its largest value")
    assert moved > SYNC_EFFECT, moved
    if sampler == "euler":
        # weight 20 amplifies gradient rounding (see test_node_and_sampler_match_a_plain_torch_oracle): 5e-5
        assert_close_across_paths(synced, captured["oracle"], rtol=5e-5, why=ORACLE)


def test_config_checks_each_batch_size_and_accepts_the_smallest_stride(host):
    """PanoramaConfig.validate (what both forms run first): window_batch 0 or sync_batch 0 alone is an error;
    stride 8 px, the smallest the UI allows, is valid (one latent cell), as is the largest window stride."""
    config = harness.loaded_module(f"{harness.PACK_NAME}.nodes.panorama.config")
    vae = harness.test_nodes_module().tiny.tiny_vae(0)
    for overrides in ({"window_batch": 0}, {"sync_batch": 0}):
        with pytest.raises(ValueError, match="window_batch and sync_batch must be at least 1"):
            config.PanoramaConfig(vae=vae, **overrides).validate()
    config.PanoramaConfig(vae=vae, stride=8, window_size=64).validate()
    config.PanoramaConfig(vae=vae, stride=64, window_size=64).validate()
    with pytest.raises(ValueError, match="stride must be a positive multiple of 8"):
        config.PanoramaConfig(vae=vae, stride=4, window_size=64).validate()


def test_each_option_is_declared_once_and_the_config_is_built_from_the_inputs(host):
    """Every PanoramaConfig option is an input of both sampler forms with the config field's default (the schema
    reads it there), and from_inputs builds the config from a node's input values: options sent are taken,
    options not sent (optional inputs of an older workflow) keep their defaults, other inputs are left out."""
    import dataclasses
    config = harness.loaded_module(f"{harness.PACK_NAME}.nodes.panorama.config")
    options = {f.name: f.default for f in dataclasses.fields(config.PanoramaConfig) if f.init}
    for node in ("GS_SyncDiffusion", "GS_SyncDiffusionSampler"):
        spec = host.nodes.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()
        inputs = {**spec["required"], **spec.get("optional", {})}
        assert set(options) <= set(inputs), (node, set(options) - set(inputs))
        for name, default in options.items():
            if default is not dataclasses.MISSING:
                assert inputs[name][1]["default"] == default, (node, name)
    vae = harness.test_nodes_module().tiny.tiny_vae(0)
    built = config.PanoramaConfig.from_inputs({"vae": vae, "stride": 64, "lpips_size": "1/2 (approximate)",
                                               "seed": 3, "width": 512})
    assert (built.vae, built.stride, built.lpips_size) == (vae, 64, "1/2 (approximate)")
    assert (built.decoder_memory, built.sync_batch, built.window_size) == ("auto", 1, 0)


@pytest.mark.parametrize("value,options,message", [
    (12, {}, "width must be a multiple of 8 pixels, got 12"),
    (0, {"positive": True}, "width must be a positive multiple of 8 pixels, got 0"),
    (16, {"positive": True}, None),
    (0, {"positive": True, "zero": "by model"}, None),
    (-8, {"positive": True, "zero": "by model"}, "width must be 0 (by model) or a positive multiple of 8 pixels"),
    (36, {"zero": "by model"}, "width must be 0 (by model) or a positive multiple of 8 pixels, got 36"),
])
def test_the_shared_size_check_names_the_input(host, value, options, message):
    """host.check_multiple (panorama's width / height / stride / window_size / tile_size / overlap): the message
    names the input and says what it takes; accepted values pass."""
    toolkit_host = harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.host")
    if message is None:
        toolkit_host.check_multiple("width", value, 8, **options)
    else:
        with pytest.raises(ValueError, match=re.escape(message)):
            toolkit_host.check_multiple("width", value, 8, **options)


# --- bad inputs, interrupts and the LPIPS network's lifetime ------------------------------------------------


@pytest.mark.parametrize("latent_width,overlap", [(32, 40), (16, 64)])
def test_circular_seamless_decode_with_an_overlap_wider_than_the_latent_keeps_the_width(host, captured, latent_width,
                                                                                     overlap):
    """The wrapped padding is clamped to the latent's width, and so is the crop: the image is as wide as the
    plain decode's (before: 16 px instead of 32, and 0 px for a 16 px latent)."""
    prompt = graphs.base()
    graphs.empty_latent(prompt, "4", latent_width, 64)
    prompt["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}}
    graphs.capture(prompt, "6c", "plain", image=["6", 0])
    add_decode(prompt, "7", "circular", ["4", 0], tile_size=128, overlap=overlap, circular=True)
    host.run(prompt)
    plain, circular = captured["plain"], captured["circular"]
    assert plain.shape == (1, 64, latent_width, 3)
    assert circular.shape == plain.shape


def lpips_folder(tmp_path, name: str, content: bytes | None = None, state=None):
    """models/lpips holding one file (written raw, or a torch.save of ``state``); returns a cleanup function."""
    import folder_paths
    folder = tmp_path / "lpips_bad"
    folder.mkdir(exist_ok=True)
    if state is not None:
        torch.save(state, str(folder / name))
    else:
        (folder / name).write_bytes(content)
    folder_paths.add_model_folder_path("lpips", str(folder), is_default=True)
    folder_paths.filename_list_cache.pop("lpips", None)

    def cleanup():
        folder_paths.folder_names_and_paths["lpips"][0].remove(str(folder))
        folder_paths.filename_list_cache.pop("lpips", None)
    return cleanup


@pytest.mark.parametrize("name,kind", [("alex_bad.safetensors", "junk"), ("alex_bad.safetensors", "empty"),
                                       ("alex_bad.safetensors", "truncated"), ("alex_bad.pth", "junk"),
                                       ("alex_bad.pth", "pickle")])
def test_a_bad_lpips_trunk_file_is_refused_naming_it(host, lpips_models, tmp_path, name, kind):
    """A junk, empty or truncated trunk file, or a .pth that needs full unpickling, in models/lpips: refused naming
    lpips_net, the file and what to use (the library's SafetensorError / UnpicklingError before)."""
    good = lpips_models["alex"].read_bytes()
    content = {"junk": b"not a weights file", "empty": b"", "truncated": good[: len(good) // 2]}.get(kind)
    state = {"features.0.weight": torch.zeros(1), "extra": harness.PickleOnly()} if kind == "pickle" else None
    cleanup = lpips_folder(tmp_path, name, content, state)
    try:
        prompt = graphs.base()
        graphs.panorama(prompt, "10", "x", lpips_net="alex", steps=2, sync_steps=1)
        _, server = host.run(prompt, expect_success=False)
    finally:
        cleanup()
    message = host.node_error(server)
    if kind == "pickle":
        assert message.startswith(f"lpips_net 'alex': models/lpips/{name} needs full unpickling"), message
    else:
        assert message.startswith(f"lpips_net 'alex': models/lpips/{name} is not a readable weights file"), message
    assert "alexnet-owt-7be5be79.pth" in message and str(tmp_path) not in message


def test_the_lpips_network_is_built_once_across_runs(host, captured, lpips_models, monkeypatch):
    """Two synced runs (and a third with the other form) construct LPIPS once: the frozen network is reused."""
    import lpips
    lpips_module = harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.lpips_model")
    lpips_module.release_lpips()
    built = []
    original = lpips.LPIPS

    def counting(*args, **kwargs):
        built.append(kwargs.get("net"))
        return original(*args, **kwargs)

    monkeypatch.setattr(lpips, "LPIPS", counting)
    for seed in (1, 2):
        prompt = graphs.base()
        graphs.panorama(prompt, "10", f"run{seed}", seed=seed, steps=2, sync_steps=1)
        host.run(prompt)
    prompt = graphs.base()
    add_custom(prompt, "20", "custom", sampler_node(sync_steps=1), steps=2)
    host.run(prompt)
    assert built == ["vgg"]
    assert not torch.equal(captured["run1"], captured["run2"])  # two real runs (different seeds)
    prompt = graphs.base()
    graphs.panorama(prompt, "10", "alex", lpips_net="alex", steps=2, sync_steps=1)
    host.run(prompt)
    assert built == ["vgg", "alex"]  # another net: built (and the cache holds one network at a time)


@pytest.mark.parametrize("interrupt_at", [2, 3, 4, 6])
def test_an_interrupt_mid_step_ends_the_prompt_before_the_next_window_batch(host, lpips_models, monkeypatch,
                                                                          interrupt_at):
    """The interrupt flag is set inside the N-th model call of the first (synced) step: 5 windows, anchor 2 (call
    1, no gradient), then the gradient passes in batches of 2: the first pass's window batch is two calls, the
    one-time probe that the model has a backward (call 2) and the batch itself (call 3); the flag is seen before
    the batch's decode and backward. Then the plain pass in batches of 2 (calls 5-7). After the flag at most the
    rest of the window batch in flight runs (the probed batch's own call), never another batch, and no sync loss
    (decode, LPIPS, backward) is computed after the flag."""
    import comfy.model_management
    import comfy.samplers
    calls = []
    original = comfy.samplers.calc_cond_batch

    def counting(*args, **kwargs):
        calls.append(comfy.model_management.processing_interrupted())
        out = original(*args, **kwargs)
        if len(calls) == interrupt_at:
            comfy.model_management.interrupt_current_processing(True)
        return out

    monkeypatch.setattr(comfy.samplers, "calc_cond_batch", counting)
    distance_class = harness.loaded_module(f"{harness.PACK_NAME}.nodes.toolkit.lpips_model").LPIPSDistance
    losses = []  # the sync loss (decode -> LPIPS -> backward) of each gradient batch: the flag when it ran
    original_distance = distance_class.__call__

    def distance(self, *args, **kwargs):
        losses.append(comfy.model_management.processing_interrupted())
        return original_distance(self, *args, **kwargs)

    monkeypatch.setattr(distance_class, "__call__", distance)
    prompt = graphs.base()
    graphs.panorama(prompt, "10", "x", steps=3, sync_steps=2, window_batch=2, sync_batch=2)
    try:
        result, server = host.run(prompt, expect_success=False)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert any(event == "execution_interrupted" for event, _ in server.messages)
    in_flight = 1 if interrupt_at == 2 else 0  # the probed window batch's own call
    assert len(calls) == interrupt_at + in_flight, calls
    assert calls.count(True) == in_flight
    assert not any(losses)  # no decode / LPIPS / backward after the flag either
    assert len(losses) == {2: 0, 3: 0, 4: 1, 6: 2}[interrupt_at]  # the gradient batches that ran before the flag


def test_a_nan_noise_mask_is_refused_by_the_sampler_form(host):
    prompt = graphs.base()
    add_custom(prompt, "20", "custom", sampler_node(sync_weight=0.0), steps=2)
    prompt["21"] = {"class_type": "SolidMask", "inputs": {"value": float("nan"), "width": WIDTH, "height": HEIGHT}}
    prompt["22"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["20l", 0], "mask": ["21", 0]}}
    prompt["20k"]["inputs"]["latent_image"] = ["22", 0]
    _, server = host.run(prompt, expect_success=False)
    assert host.node_error(server).startswith("noise_mask (of the sampler's latent): it has NaN or infinite values")
