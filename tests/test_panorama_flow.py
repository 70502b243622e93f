"""SyncDiffusion / MultiDiffusion panoramas on the flow transformers (tiny seeded models of
devkit/host_nodes/gs_test_nodes/tiny_flow.py) through ComfyUI's real executor.

- positions: every window is its own image to the model: Flux builds its RoPE ids for the window's grid from 0
  (docs/methods/panorama.md section 4, "Positions on transformers"), also for a window that wraps around the seam
  of a 360-degree canvas; the recorder on a model clone sees each call's latent input and image ids;
- the flow nudge factor against autograd in the VP latent;
- Seamless Decode with the 16-channel flow VAE;
- the panorama (and Seamless Decode) on tiny SD3.5, Chroma, Z-Image (with the sync), Qwen-Image and Flux.1 schnell;
  SyncDiffusion on Qwen-Image refuses its video VAE.
The trajectory oracle on tiny Flux.1 dev is tests/oracles/test_flow_panorama_oracle.py.

Canvas 128x64 px (16x8 latent cells), windows 64 px (8 cells = 4x4 tokens of 2x2 cells), stride 32 px.
"""
import pytest
import torch

from devkit import graphs, harness
from devkit.tolerance import FORMULA, PATHS, assert_close_across_paths

WIDTH, HEIGHT, WINDOW, STRIDE, SEED = 128, 64, 64, 32, 3
CELLS = 8  # latent cells per window side
TOKENS = CELLS // 2  # tokens per window side (2x2 patches)


def flow_prompt(kind: str = "flux_dev", recorder: bool = False) -> dict:
    """Tiny flow checkpoint (node ck), the tiny CLIP's text encodings, FluxGuidance 3.5 on the positive (a no-op
    for families without a guidance input)."""
    prompt = {
        "ck": {"class_type": "GS_TestTinyFlowCheckpoint", "inputs": {"kind": kind, "seed": 0}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a castle on a hill", "clip": ["ck", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ck", 1]}},
        "guided": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["pos", 0], "guidance": 3.5}},
    }
    if recorder:
        prompt["rec"] = {"class_type": "GS_TestPositionRecorder", "inputs": {"model": ["ck", 0], "key": "ids"}}
    return prompt


def add_panorama(prompt: dict, node_id: str, key: str, model=None, **overrides) -> list:
    inputs = {"model": model or ["ck", 0], "positive": ["guided", 0], "negative": ["neg", 0], "vae": ["ck", 2],
              "width": WIDTH, "height": HEIGHT, "seed": SEED, "steps": 2, "cfg": 1.0, "scheduler": "simple",
              "window_size": WINDOW, "stride": STRIDE, "window_batch": 1, **overrides}
    out = graphs.syncdiffusion(prompt, node_id, **inputs)
    graphs.capture(prompt, node_id + "c", key, latent=out)
    return out


@pytest.fixture
def records(host):
    store = harness.test_nodes_module().window_probes.RECORDS
    store.clear()
    yield store
    store.clear()


def window_local_ids() -> torch.Tensor:
    """The documented ids of every window: Flux's (index, row, column) per token in raster order, rows and columns
    counted from 0 inside the window, index 0 (no reference image)."""
    rows, cols = torch.meshgrid(torch.arange(TOKENS), torch.arange(TOKENS), indexing="ij")
    return torch.stack([torch.zeros(TOKENS * TOKENS), rows.flatten().float(), cols.flatten().float()], dim=-1)


@pytest.mark.parametrize("loop, lefts", [(False, [0, 4, 8]), (True, [0, 4, 8, 12])])
def test_each_flux_window_sees_its_own_window_local_positions(host, captured, records, loop, lefts):
    """Each model call is one window (window_batch 1, cfg 1: one call per window per step). Its image ids are the
    window's own 0-based grid, never canvas offsets (no rope_options), and its latent input is the window's crop
    of the canvas: at the first step the canvas is sigma_0 * KSampler's noise for the seed, so every window's
    input is compared with the crop of that noise at the window's columns, the loop's last window taking
    columns 12..15 then 0..3 (so the seam's two sides are neighbouring ids 1 and 2 in that window)."""
    prompt = flow_prompt(recorder=True)
    add_panorama(prompt, "pano", "pano", model=["rec", 0], loop=loop)
    prompt["sig"] = {"class_type": "BasicScheduler", "inputs": {"model": ["ck", 0], "scheduler": "simple",
                                                               "steps": 2, "denoise": 1.0}}
    graphs.capture(prompt, "sigc", "sigmas", sigmas=["sig", 0])
    host.run(prompt)
    calls = records["ids"]
    assert len(calls) == 2 * len(lefts)  # two steps, one call per window
    expected = window_local_ids()
    for call in calls:
        assert call["rope_options"] is None
        assert tuple(call["x"].shape) == (1, 16, CELLS, CELLS)
        # ids are the model's own integers-as-floats, built by the same code path: exact
        assert torch.equal(call["img_ids"][0], expected), call["img_ids"][0]
    noise = torch.randn(1, 16, HEIGHT // 8, WIDTH // 8, generator=torch.manual_seed(SEED))
    canvas = float(captured["sigmas"][0]) * noise
    for call, left in zip(calls[:len(lefts)], lefts):
        columns = torch.arange(left, left + CELLS) % (WIDTH // 8)
        assert_close_across_paths(call["x"], canvas[..., columns], rtol=1e-5, why=PATHS)
    if loop:
        wrap = calls[len(lefts) - 1]["x"]
        # the seam: the canvas' last column is token column 1's right half, its first column token column 2's left
        assert_close_across_paths(wrap[..., 3], canvas[..., -1], rtol=1e-5, why=PATHS)
        assert_close_across_paths(wrap[..., 4], canvas[..., 0], rtol=1e-5, why=PATHS)


@pytest.mark.parametrize("flow", [True, False])
@pytest.mark.parametrize("sigma", [1.0, 0.8, 0.5, 0.1])
def test_the_nudge_is_the_reference_step_in_the_vp_latent(flow, sigma):
    """SyncDiffusion's step z <- z - w dL/dz in the reference's VP latent z, taken by autograd in z and mapped back
    to the sampler's x, equals guidance/panorama.nudge: x <- x - w n^2 dL/dx.

    Flow (CONST): x = (1 - s) x0 + s eps, and z = x / n with n^2 = (1 - s)^2 + s^2 is a VP latent (alpha = (1 - s)/n,
    sigma_vp = s / n, alpha^2 + sigma_vp^2 = 1), the DDIM latent the reference nudges. UNets (x = x0 + s eps):
    n^2 = 1 + s^2. The loss is any smooth function of the model's x (here of a fixed random map)."""
    from guidance import panorama

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 4, 4, generator=gen, dtype=torch.float64)
    target = torch.randn(1, 16, 4, 4, generator=gen, dtype=torch.float64)
    weight = 3.0
    n = ((1 - sigma) ** 2 + sigma ** 2) ** 0.5 if flow else (1 + sigma ** 2) ** 0.5

    def loss_of_x(value):
        return ((value.tanh() - target) ** 2).sum()

    z = (x / n).requires_grad_(True)
    (grad_z,) = torch.autograd.grad(loss_of_x(z * n), z)  # the loss seen as a function of the VP latent
    expected = (z.detach() - weight * grad_z) * n  # the reference's step in z, back in the sampler's x
    xg = x.clone().requires_grad_(True)
    (grad_x,) = torch.autograd.grad(loss_of_x(xg), xg)
    got = panorama.nudge(x, grad_x, weight, sigma, flow=flow)
    assert_close_across_paths(got, expected, rtol=1e-12, why=FORMULA)
    if flow and sigma not in (1.0,):  # the UNet factor would be another step on a flow model
        wrong = panorama.nudge(x, grad_x, weight, sigma, flow=False)
        assert float((wrong - expected).abs().max()) > 1e-3 * float(expected.abs().max())


def test_seamless_decode_with_the_16_channel_flow_vae(host, captured):
    """GS_SeamlessDecode of a Flux panorama latent (16 channels): in one tile it is VAEDecode's image; circular in
    one tile it is the VAE's decode of the latent with `overlap` wrapped columns on each side, cropped (computed
    here with the same seeded tiny flow VAE outside the executor); in 64-px tiles it stays finite and in [0, 1]."""
    prompt = flow_prompt()
    add_panorama(prompt, "pano", "latent", loop=True)
    prompt["plain"] = {"class_type": "VAEDecode", "inputs": {"samples": ["pano", 0], "vae": ["ck", 2]}}
    graphs.capture(prompt, "plainc", "plain", image=["plain", 0])
    for name, tile, overlap, circular in (("one", 512, 0, False), ("circ", 512, 16, True), ("tiled", 64, 16, False)):
        prompt[name] = {"class_type": "GS_SeamlessDecode", "inputs": {
            "samples": ["pano", 0], "vae": ["ck", 2], "tile_size": tile, "overlap": overlap, "circular": circular}}
        graphs.capture(prompt, name + "c", name, image=[name, 0])
    host.run(prompt)
    latent = captured["latent"]
    assert latent.shape[1] == 16
    for name in ("one", "circ", "tiled"):
        assert tuple(captured[name].shape) == (1, HEIGHT, WIDTH, 3), name
        assert bool(torch.isfinite(captured[name]).all()) and 0 <= float(captured[name].min()) <= float(
            captured[name].max()) <= 1
    assert_close_across_paths(captured["one"], captured["plain"], rtol=1e-5, why=PATHS)
    vae = harness.test_nodes_module().tiny_flow.tiny_flow_vae(0)
    pad = 2  # 16 px of overlap = 2 latent columns each side
    padded = torch.cat([latent[..., -pad:], latent, latent[..., :pad]], dim=-1)
    expected = vae.decode(padded)[:, :, pad * 8:-pad * 8]
    assert_close_across_paths(captured["circ"], expected.reshape(captured["circ"].shape), rtol=1e-5, why=PATHS)
    assert float((captured["circ"] - captured["one"]).abs().max()) > 0  # the wrap reaches into the image


@pytest.mark.parametrize("kind, sync_weight", [("sd35", 0.0), ("chroma", 0.0), ("z_image", 20.0), ("qwen_image", 0.0),
                                               ("flux_schnell", 0.0)])
def test_the_panorama_runs_on_sd35_chroma_z_image_and_qwen_image(host, captured, lpips_models, caplog, kind,
                                                                 sync_weight):
    """MultiDiffusion on tiny SD3.5 (cfg 2, a negative), Chroma and Qwen-Image, SyncDiffusion (the gradient through
    the model) on tiny Z-Image, three windows over 128x64 px: a finite, non-constant 16-channel latent of the
    canvas' size (with the sync: the gradient through the transformer, no identity fallback), decoded by Seamless
    Decode in 64-px tiles (no oracle for these families yet: the Flux.1 dev
    oracle is tests/oracles/test_flow_panorama_oracle.py)."""
    prompt = flow_prompt(kind)
    add_panorama(prompt, "pano", "pano", cfg=2.0, sync_weight=sync_weight, sync_steps=1, loss_decoder="fp32")
    prompt["dec"] = {"class_type": "GS_SeamlessDecode", "inputs": {
        "samples": ["pano", 0], "vae": ["ck", 2], "tile_size": 64, "overlap": 16, "circular": False}}
    graphs.capture(prompt, "decc", "image", image=["dec", 0])
    with caplog.at_level("INFO", logger="guided_synthesis"):
        host.run(prompt)
    fallbacks = [r.getMessage() for r in caplog.records if "no gradient through" in r.getMessage()]
    assert not fallbacks, fallbacks  # the sync's gradient went through the transformer, not the identity
    assert ("gradients flow through the UNet" in caplog.text) == (sync_weight > 0)
    latent = captured["pano"]
    # Qwen-Image's latents are one-frame video latents [B, 16, 1, H, W] (its Wan 2.1 VAE)
    frames = (1,) if kind == "qwen_image" else ()
    assert tuple(latent.shape) == (1, 16, *frames, HEIGHT // 8, WIDTH // 8) and bool(torch.isfinite(latent).all())
    assert float(latent.std()) > 0
    image = captured["image"]
    assert tuple(image.shape) == (1, HEIGHT, WIDTH, 3) and bool(torch.isfinite(image).all())


def test_syncdiffusion_on_qwen_image_refuses_its_video_vae_by_name(host, lpips_models):
    """Qwen-Image's VAE is the Wan 2.1 video VAE; the sync loss decodes through an image VAE, so SyncDiffusion
    stops with the reason (MultiDiffusion runs, above)."""
    prompt = flow_prompt("qwen_image")
    add_panorama(prompt, "pano", "pano", cfg=2.0, sync_weight=20.0, sync_steps=1)
    result, server = host.run(prompt, expect_success=False)
    assert not result["success"] and "image VAE" in host.node_error(server), host.node_error(server)
