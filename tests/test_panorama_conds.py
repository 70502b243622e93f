"""Per-window conditioning in the panorama sampler (nodes/panorama/window_conds.py) through the real executor.

A recorder (GS_TestCondRecorder: a ``sampler_calc_cond_batch_function`` on a clone of MODEL, which the
panorama chains) keeps, for every model call, the input x and what each conditioning entry holds. The same
graph also runs through plain KSampler on the whole canvas, where ComfyUI prepares the conditioning for the
canvas. At the first step every window's input is its crop of the canvas' first input, which identifies the
window of each item; that item's conditioning must then be the same window's crop of the canvas'
conditioning, computed here independently (crops by slicing, ComfyUI's area weights written out below).

Canvas 160x32 px (20x4 latent), windows 32 px (4) at stride 16 px (2): 9 windows, lefts 0, 2, ..., 16.
"""
import pytest
import torch

from devkit import graphs
from devkit import harness
from devkit.tolerance import PATHS, assert_close_across_paths, close_across_paths

WIDTH, HEIGHT, WINDOW, STRIDE = 160, 32, 4, 2
LEFTS = list(range(0, WIDTH // 8 - WINDOW + 1, STRIDE))


def records(key: str) -> list:
    return harness.test_nodes_module().window_probes.RECORDS.get(key, [])


@pytest.fixture(autouse=True)
def clear_records(host, lpips_models):
    harness.test_nodes_module().window_probes.RECORDS.clear()
    yield
    harness.test_nodes_module().window_probes.RECORDS.clear()


def window_crop(tensor: torch.Tensor, left: int, scale: int = 1) -> torch.Tensor:
    return tensor[..., :, left * scale:(left + WINDOW) * scale]


def build(prompt: dict, positive=("2", 0), negative=("3", 0), latent=None, sync_weight=20.0) -> None:
    """Recorder models, a canvas KSampler run ('canvas') and a panorama run ('pano'), one step each."""
    prompt["50"] = {"class_type": "GS_TestCondRecorder", "inputs": {"model": ["1", 0], "key": "canvas"}}
    prompt["51"] = {"class_type": "GS_TestCondRecorder", "inputs": {"model": ["1", 0], "key": "pano"}}
    if latent is None:
        latent = graphs.empty_latent(prompt, "52", WIDTH, HEIGHT)
    prompt["53"] = {"class_type": "KSampler", "inputs": {
        "model": ["50", 0], "seed": 5, "steps": 1, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": list(positive), "negative": list(negative), "latent_image": latent, "denoise": 1.0}}
    graphs.capture(prompt, "54", "canvas", latent=["53", 0])
    graphs.panorama(prompt, "55", "pano", model=["51", 0], positive=list(positive), negative=list(negative),
                    width=WIDTH, height=HEIGHT, steps=1, scheduler="normal", window_size=WINDOW * 8,
                    stride=STRIDE * 8, sync_weight=sync_weight, sync_steps=1, window_batch=3, sync_batch=2)
    if latent[0] != "52":
        graphs.syncdiffusion_sampler(prompt, "55", **prompt.pop("55")["inputs"])
        sigmas = graphs.basic_scheduler(prompt, "56", 1)
        out = graphs.sampler_custom(prompt, "57", ["55", 0], sigmas, latent, 5, model=("51", 0),
                                    positive=positive, negative=negative)
        graphs.capture(prompt, "55c", "pano", latent=out)


def matched_items():
    """(call, item, left) for every panorama-call item that is a window's crop of the canvas' first input."""
    canvas = records("canvas")
    assert canvas, "the canvas run made no model call"
    first_x = canvas[0]["x"][:1]
    found = []
    for call in records("pano"):
        for item in range(call["x"].shape[0]):
            for left in LEFTS:
                if close_across_paths(call["x"][item], window_crop(first_x, left)[0]):
                    found.append((call, item, left))
    assert {left for _, _, left in found} == set(LEFTS), "some windows never ran on their own crop"
    return found


def entries(call: dict, which: int = 0) -> list:
    return call["conds"][which]


def test_inpainting_models_get_each_windows_c_concat(host):
    """An inpainting UNet (9 input channels) through InpaintModelConditioning: each window's c_concat (mask +
    masked latent) is its crop of the canvas' c_concat, for the sync's gradient calls and the plain ones."""
    prompt = graphs.base(kind="sd15_inpaint")
    prompt["40"] = {"class_type": "GS_TestRampImage", "inputs": {"width": WIDTH, "height": HEIGHT}}
    prompt["41"] = {"class_type": "GS_TestStrokes", "inputs": {"width": WIDTH, "height": HEIGHT, "left": 0xCC3322,
                                                               "right": 0x2255CC, "batch": 1}}
    prompt["42"] = {"class_type": "InpaintModelConditioning", "inputs": {
        "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "pixels": ["40", 0], "mask": ["41", 1],
        "noise_mask": True}}
    build(prompt, positive=("42", 0), negative=("42", 1), latent=["42", 2])
    host.run(prompt)
    canvas_concat = entries(records("canvas")[0])[0]["c_concat"]
    assert canvas_concat.shape[-2:] == (HEIGHT // 8, WIDTH // 8) and canvas_concat.shape[1] == 5
    checked = 0
    for call, item, left in matched_items():
        for which in (0, 1):
            if call["conds"][which] is None:
                continue
            for entry in entries(call, which):
                assert_close_across_paths(entry["c_concat"][item], window_crop(canvas_concat, left)[0],
                                          rtol=1e-5, why=PATHS)
                checked += 1
    assert checked >= 2 * len(LEFTS)
    assert len({call["x"].shape[0] for call in records("pano")}) > 1  # batched windows (3) and gradient pairs (2)


def canvas_area_weights(area, strength: float) -> torch.Tensor:
    """ComfyUI's weight of an area entry on the canvas [H, W] (latent): ``strength`` inside the area (clipped
    to the canvas), its edges inside the canvas feathered over rr = min(8, size // 4) cells by (t + 1) / rr."""
    height, width, top, left = area
    height, width = min(height, HEIGHT // 8 - top), min(width, WIDTH // 8 - left)
    weights = torch.zeros(HEIGHT // 8, WIDTH // 8)
    block = torch.full((height, width), float(strength))
    for dim, (size, start, canvas) in enumerate(((height, top, HEIGHT // 8), (width, left, WIDTH // 8))):
        rr = min(8, size // 4)
        for t in range(rr):
            ramp = (t + 1) / rr
            if start != 0:
                block.narrow(dim, t, 1).mul_(ramp)
            if start + size < canvas:
                block.narrow(dim, size - 1 - t, 1).mul_(ramp)
    weights[top:top + height, left:left + width] = block
    return weights


def test_area_and_mask_conditioning_follow_each_window(host):
    """ConditioningSetArea (feathered edges, strength) and ConditioningSetMask (mask strength) entries reach
    each window as the window's crop of their canvas weights; unrestricted entries stay unrestricted."""
    prompt = graphs.base()
    prompt["40"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a tower"}}
    prompt["41"] = {"class_type": "ConditioningSetArea", "inputs": {
        "conditioning": ["40", 0], "width": 96, "height": 64, "x": 48, "y": 0, "strength": 0.8}}
    prompt["42"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a lake"}}
    prompt["43"] = {"class_type": "GS_TestRampImage", "inputs": {"width": WIDTH, "height": HEIGHT}}
    prompt["44"] = {"class_type": "ConditioningSetMask", "inputs": {
        "conditioning": ["42", 0], "mask": ["43", 1], "strength": 0.6, "set_cond_area": "default"}}
    prompt["45"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["2", 0],
                                                                     "conditioning_2": ["41", 0]}}
    prompt["46"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["45", 0],
                                                                     "conditioning_2": ["44", 0]}}
    build(prompt, positive=("46", 0))
    host.run(prompt)
    canvas = entries(records("canvas")[0])
    assert [e["area"] is not None for e in canvas] == [False, True, False]
    assert canvas[1]["area"][:4] == (8, 12, 0, 6)  # latent cells: height, width, top, left (clipped to 4 rows)
    expected = [None, canvas_area_weights(canvas[1]["area"][:4], 0.8),
                canvas[2]["mask"][0] * canvas[2]["mask_strength"] * canvas[2]["strength"]]
    assert float(expected[1][0, 6]) == pytest.approx(0.8 / 3) and float(expected[2].max()) > 0.5
    for call, item, left in matched_items():
        got = entries(call)
        for entry, weights in zip(got, expected):
            assert entry["area"] is None
            if weights is None:
                assert entry["mask"] is None
                continue
            mask = entry["mask"][item] * entry["mask_strength"] * entry["strength"]
            assert_close_across_paths(mask, window_crop(weights, left), rtol=1e-5, why=PATHS)


@pytest.mark.parametrize("hint_width", [WIDTH, WIDTH // 2])
def test_controlnet_hints_are_cropped_per_window(host, hint_width, caplog):
    """A tiny ControlNet through ControlNetApplyAdvanced: each window's hint is its crop (in pixels) of the
    hint scaled to the canvas (a half-size hint: ComfyUI's nearest-exact upscale, here doubling each pixel),
    on a copy of the control; the user's control keeps its own hint. The ControlNet is built in inference
    mode, as ComfyUI's loader builds it, so autograd cannot pass its weights: the sync says it falls back to
    the identity Jacobian (README)."""
    prompt = graphs.base()
    prompt["40"] = {"class_type": "GS_TestRampImage", "inputs": {"width": hint_width,
                                                                 "height": HEIGHT * hint_width // WIDTH}}
    prompt["41"] = {"class_type": "GS_TestTinyControlNet", "inputs": {"seed": 3}}
    prompt["42"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["2", 0], "negative": ["3", 0], "control_net": ["41", 0], "image": ["40", 0],
        "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    build(prompt, positive=("42", 0), negative=("42", 1))
    host.run(prompt)
    original = entries(records("canvas")[0])[0]["control"]
    hint = original.cond_hint_original
    assert tuple(hint.shape) == (1, 3, HEIGHT * hint_width // WIDTH, hint_width)  # untouched by the panorama
    canvas_hint = hint.repeat_interleave(WIDTH // hint_width, -1).repeat_interleave(WIDTH // hint_width, -2)
    for call, item, left in matched_items():
        for which in (0, 1):
            for entry in entries(call, which):
                assert entry["control"] is not original
                assert_close_across_paths(entry["hint"][item], window_crop(canvas_hint, left, 8)[0],
                                          rtol=1e-5, why=PATHS)
    assert torch.isfinite(harness.test_nodes_module().CAPTURED["pano"]).all()
    assert "identity Jacobian" in caplog.text


def test_sdxl_size_conditioning_is_the_windows(host):
    """SDXL's y (size conditioning) gives each window its own size as width and height (ComfyUI would give
    the canvas' 160x32)."""
    prompt = graphs.base(kind="sdxl")
    build(prompt)
    host.run(prompt)
    canvas_call = records("canvas")[0]
    model = canvas_call["model"]
    pooled = harness.test_nodes_module().tiny.random_conditioning("sdxl", 1)[0][1]["pooled_output"]
    window_y = model.encode_adm(pooled_output=pooled, width=WINDOW * 8, height=WINDOW * 8, device="cpu")
    canvas_y = model.encode_adm(pooled_output=pooled, width=WIDTH, height=HEIGHT, device="cpu")
    assert_close_across_paths(entries(canvas_call)[0]["y"][0], canvas_y[0].to(torch.float32), rtol=1e-5, why=PATHS)
    assert float((window_y - canvas_y).abs().max()) > 0.1
    for call, _, _ in matched_items():  # one y for every item (the windows share a size; ComfyUI repeats it)
        y = entries(call)[0]["y"]
        assert y.shape[0] == 1
        assert_close_across_paths(y[0], window_y[0].to(torch.float32), rtol=1e-5, why=PATHS)


@pytest.mark.parametrize("x,y", [(WIDTH + 16, 0), (0, HEIGHT)], ids=["right-of", "below"])
def test_an_area_outside_the_canvas_is_refused_naming_it(host, x, y):
    """ConditioningSetArea placed beyond the canvas: refused with the area and the canvas in pixels (ComfyUI's
    own sampler fails there with 'narrow(): length must be non-negative')."""
    prompt = graphs.base()
    prompt["40"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a tower"}}
    prompt["41"] = {"class_type": "ConditioningSetArea", "inputs": {
        "conditioning": ["40", 0], "width": 64, "height": 64, "x": x, "y": y, "strength": 1.0}}
    prompt["45"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["2", 0],
                                                                     "conditioning_2": ["41", 0]}}
    graphs.panorama(prompt, "55", "pano", positive=["45", 0], width=WIDTH, height=HEIGHT, steps=1,
                    scheduler="normal", window_size=WINDOW * 8, stride=STRIDE * 8, sync_weight=0.0, window_batch=3)
    _, server = host.run(prompt, expect_success=False)
    message = host.node_error(server)
    assert message.startswith(f"conditioning area: 64x64 px at x={x}, y={y} lies outside the panorama canvas "
                              f"({WIDTH}x{HEIGHT} px, width x height)"), message
