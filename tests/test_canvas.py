"""Stroke Canvas node (GS_StrokeCanvas): painting file -> IMAGE + MASK, errors, caching fingerprint."""
import copy
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from devkit import harness
from devkit.tolerance import FORMULA, assert_close_across_paths

W, H = 40, 24  # not square, to catch width/height mix-ups
RED, BLUE = (224, 60, 49), (0, 0, 255)


def input_dir() -> Path:
    import folder_paths
    return Path(folder_paths.get_input_directory())


def write_painting(name: str, width: int = W, height: int = H, mode: str = "RGBA", color=RED) -> str:
    """A painting as the widget uploads it: left half painted, one half-transparent pixel, rest transparent.
    Returns its annotated reference."""
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[:, : width // 2, :3] = color
    rgba[:, : width // 2, 3] = 255
    rgba[2, width - 3] = (0, 255, 0, 128)
    folder = input_dir() / "guided_synthesis"
    folder.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(rgba, "RGBA")
    (picture if mode == "RGBA" else picture.convert(mode)).save(folder / name)
    return f"guided_synthesis/{name} [input]"


def canvas(host):
    return host.nodes.NODE_CLASS_MAPPINGS["GS_StrokeCanvas"]


def run_canvas(host, painting, width=W, height=H, background_color="#0000ff", image=None):
    output = canvas(host).execute(painting=painting, width=width, height=height,
                                  background_color=background_color, image=image)
    return output.result, output.ui


def test_composite_and_mask_follow_the_paintings_alpha(host):
    ref = write_painting(f"t_{uuid.uuid4().hex}.png")
    (image, mask), ui = run_canvas(host, ref)
    assert image.shape == (1, H, W, 3) and image.dtype == torch.float32
    assert mask.shape == (1, H, W) and mask.dtype == torch.float32
    red, blue = torch.tensor(RED) / 255.0, torch.tensor(BLUE) / 255.0
    assert_close_across_paths(image[0, :, : W // 2], red.expand(H, W // 2, 3), rtol=1e-5, why=FORMULA)
    unpainted = image[0, :, W // 2:].reshape(-1, 3)
    assert (torch.isclose(unpainted, blue, atol=1e-5).all(dim=-1)).sum() == H * (W - W // 2) - 1  # abs: k/255 in [0, 1]
    # half-transparent green over blue
    alpha = 128 / 255
    assert_close_across_paths(image[0, 2, W - 3], torch.tensor([0.0, alpha, 1 - alpha]), rtol=1e-5, why=FORMULA)
    assert torch.all(mask[0, :, : W // 2] == 1)
    assert mask[0, 2, W - 3].item() == pytest.approx(alpha)
    assert mask.sum().item() == pytest.approx(H * (W // 2) + alpha)
    assert ui is None  # nothing to show when no image is connected


def test_image_input_is_the_background_resized_and_left_unchanged(host):
    ref = write_painting(f"t_{uuid.uuid4().hex}.png")
    background = torch.rand(2, H * 2, W * 2, 4)  # RGBA, twice the canvas size, batch of 2
    before = background.clone()
    (image, mask), ui = run_canvas(host, ref, image=background)
    torch.testing.assert_close(background, before, rtol=0, atol=0)  # exact: untouched, no arithmetic
    assert image.shape == (2, H, W, 3) and mask.shape == (2, H, W)
    assert_close_across_paths(image[:, :, : W // 2], (torch.tensor(RED) / 255.0).expand(2, H, W // 2, 3),
                              rtol=1e-5, why=FORMULA)
    # unpainted pixels are the resized picture (its RGB; the alpha channel is not a colour)
    import comfy.utils
    resized = comfy.utils.common_upscale(background[..., :3].movedim(-1, 1), W, H, "bilinear", "disabled").movedim(1, -1)
    assert_close_across_paths(image[:, 5:, -1], resized[:, 5:, -1].clamp(0, 1), rtol=1e-5, why=FORMULA)
    assert (image[0] - image[1]).abs().max() > 0.01
    # the widget gets the background back as a temp file to paint over
    shown = ui["gs_canvas_background"]
    import folder_paths
    assert len(shown) == 1 and shown[0]["type"] == "temp"
    file = Path(folder_paths.get_temp_directory()) / shown[0]["subfolder"] / shown[0]["filename"]
    assert Image.open(file).size == (W, H)


def test_empty_painting_gives_the_background_and_an_empty_mask(host):
    (image, mask), _ = run_canvas(host, "", background_color="#336699")
    assert_close_across_paths(image, (torch.tensor([0x33, 0x66, 0x99]) / 255.0).expand(1, H, W, 3),
                              rtol=1e-5, why=FORMULA)
    assert mask.shape == (1, H, W) and mask.abs().sum() == 0


def test_a_file_without_alpha_counts_as_fully_painted(host):
    ref = write_painting(f"t_{uuid.uuid4().hex}.png", mode="RGB")
    (image, mask), _ = run_canvas(host, ref)
    assert torch.all(mask == 1)
    assert torch.all(image[0, :, -1] == 0)  # transparent pixels were black in the file: no blue shows


def test_runs_in_a_graph_and_the_mask_reaches_downstream_nodes(host, captured):
    ref = write_painting(f"t_{uuid.uuid4().hex}.png")
    prompt = {
        "1": {"class_type": "GS_StrokeCanvas",
              "inputs": {"painting": ref, "width": W, "height": H, "background_color": "#ffffff"}},
        "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}},
        "3": {"class_type": "GS_TestCapture", "inputs": {"key": "image", "image": ["1", 0]}},
        "4": {"class_type": "GS_TestCapture", "inputs": {"key": "mask", "image": ["2", 0]}},
    }
    host.run(prompt)
    assert captured["image"].shape == (1, H, W, 3)
    assert captured["mask"][0, :, : W // 2].min() == 1 and captured["mask"][0, 5:, W // 2:].max() == 0


def test_missing_file_is_a_validation_error_naming_the_input(host):
    prompt = {"1": {"class_type": "GS_StrokeCanvas",
                    "inputs": {"painting": "guided_synthesis/nope.png [input]", "width": W, "height": H,
                               "background_color": "#ffffff"}},
              "2": {"class_type": "GS_TestCapture", "inputs": {"key": "x", "image": ["1", 0]}}}
    result, _ = host.run(prompt, expect_success=False)
    text = str(result["node_errors"])
    assert "painting" in text and "nope.png" in text and "not found" in text
    with pytest.raises(FileNotFoundError, match=r"painting: file .*nope\.png.* not found"):
        run_canvas(host, "guided_synthesis/nope.png [input]")


def test_wrong_size_names_the_input_and_both_sizes(host, captured):
    ref = write_painting(f"t_{uuid.uuid4().hex}.png")
    with pytest.raises(ValueError, match=rf"painting: .* is {W}x{H} pixels but .* {W}x{H + 8}"):
        run_canvas(host, ref, height=H + 8)
    prompt = {"1": {"class_type": "GS_StrokeCanvas",
                    "inputs": {"painting": ref, "width": W + 8, "height": H, "background_color": "#ffffff"}},
              "2": {"class_type": "GS_TestCapture", "inputs": {"key": "x", "image": ["1", 0]}}}
    result, server = host.run(prompt, expect_success=False)
    assert not result["success"]
    assert f"painting: " in host.node_error(server) and f"{W + 8}x{H}" in host.node_error(server)


def test_references_outside_the_input_folder_and_bad_colours_are_refused(host):
    with pytest.raises(ValueError, match="painting: .* points outside"):
        run_canvas(host, "../../etc/passwd [input]")
    with pytest.raises(ValueError, match="background_color: 'blue' is not a colour"):
        run_canvas(host, "", background_color="blue")
    prompt = {"1": {"class_type": "GS_StrokeCanvas",
                    "inputs": {"painting": "", "width": W, "height": H, "background_color": "#12345"}},
              "2": {"class_type": "GS_TestCapture", "inputs": {"key": "x", "image": ["1", 0]}}}
    result, server = host.run(prompt, expect_success=False)
    assert not result["success"] and "background_color: '#12345' is not a colour" in host.node_error(server)


def test_validation_errors_are_attributed_to_their_own_input(host):
    """The host keeps checking width/height (validate_inputs names only 'painting'), and a painting error is
    reported on 'painting' alone."""
    def errors(**inputs):
        prompt = {"1": {"class_type": "GS_StrokeCanvas", "inputs": {
                      "painting": "", "width": W, "height": H, "background_color": "#ffffff", **inputs}},
                  "2": {"class_type": "GS_TestCapture", "inputs": {"key": "x", "image": ["1", 0]}}}
        result, _ = host.run(prompt, expect_success=False)
        return [(e["type"], e["extra_info"].get("input_name")) for e in result["node_errors"]["1"]["errors"]]

    assert errors(width=3) == [("value_smaller_than_min", "width")]
    assert errors(height=8192 + 8) == [("value_bigger_than_max", "height")]
    assert errors(painting="missing_file.png") == [("custom_validation_failed", "painting")]


def test_fingerprint_follows_the_file_contents(host):
    name = f"t_{uuid.uuid4().hex}.png"
    ref = write_painting(name)
    node = canvas(host)
    first = node.fingerprint_inputs(painting=ref, width=W, height=H)
    assert first == node.fingerprint_inputs(painting=ref, width=W, height=H)
    write_painting(name)  # same pixels, rewritten
    assert node.fingerprint_inputs(painting=ref) == first
    write_painting(name, color=(1, 2, 3))  # repainted under the same name
    assert node.fingerprint_inputs(painting=ref) != first
    assert node.fingerprint_inputs(painting="") == ""


def test_the_executor_reruns_the_node_only_when_the_painting_file_changes(host, captured):
    """One PromptExecutor with its cache, as the server keeps it between queued prompts."""
    import asyncio

    import execution

    name = f"t_{uuid.uuid4().hex}.png"
    ref = write_painting(name)
    prompt = {"1": {"class_type": "GS_StrokeCanvas",
                    "inputs": {"painting": ref, "width": W, "height": H, "background_color": "#ffffff"}},
              "2": {"class_type": "GS_TestCapture", "inputs": {"key": "image", "image": ["1", 0]}}}
    server = harness.RecordingServer()
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0})

    def run():
        queued = copy.deepcopy(prompt)  # the server parses a fresh prompt per request (the executor annotates it)
        prompt_id = str(uuid.uuid4())
        ok, error, outputs, _ = asyncio.run(execution.validate_prompt(prompt_id, queued, None))[:4]
        assert ok, error
        server.messages.clear()
        executor.execute(queued, prompt_id, {"client_id": server.client_id}, outputs)
        assert executor.success
        return harness.executed_order(server), captured["image"].clone()

    ran, first = run()
    assert "1" in ran
    ran, _ = run()
    assert "1" not in ran  # same file: cached
    write_painting(name, color=(10, 200, 30))
    os.utime(input_dir() / "guided_synthesis" / name)
    ran, second = run()
    assert "1" in ran
    assert_close_across_paths(second[0, 0, 0], torch.tensor([10, 200, 30]) / 255.0, rtol=1e-5, why=FORMULA)
    assert (first - second).abs().max() > 0.01


def test_painting_and_size_can_come_from_links(host, captured):
    ref = write_painting(f"t_{uuid.uuid4().hex}.png")
    prompt = {"1": {"class_type": "PrimitiveString", "inputs": {"value": ref}},
              "2": {"class_type": "PrimitiveInt", "inputs": {"value": W}},
              "3": {"class_type": "GS_StrokeCanvas",
                    "inputs": {"painting": ["1", 0], "width": ["2", 0], "height": H, "background_color": "#ffffff"}},
              "4": {"class_type": "GS_TestCapture", "inputs": {"key": "image", "image": ["3", 0]}}}
    host.run(prompt)
    assert captured["image"].shape == (1, H, W, 3)
    prompt["1"]["inputs"]["value"] = "guided_synthesis/missing.png [input]"
    result, server = host.run(prompt, expect_success=False)
    assert not result["success"] and "painting: file" in host.node_error(server)
