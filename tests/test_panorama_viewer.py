"""The 360-degree viewer's UI output, through ComfyUI's real executor with the tiny seeded models.

GS_SyncDiffusion with ``loop`` names a preview of the latent's colours, GS_SeamlessDecode with ``circular`` a
preview of the decoded panorama, both PNG files in ComfyUI's temp folder under the UI key ``gs_panorama_360``
(web/widgets/panorama_viewer.js shows them); without loop / circular the nodes send nothing.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from devkit import graphs
from devkit import harness

WIDTH, HEIGHT = 128, 32
UI_KEY = "gs_panorama_360"


def panorama(prompt, loop):
    graphs.syncdiffusion(prompt, "10", width=WIDTH, height=HEIGHT, batch_size=2, seed=3, sync_steps=0, loop=loop,
                         window_batch=8)
    graphs.capture(prompt, "10c", "latent", latent=["10", 0])
    prompt["11"] = {"class_type": "GS_SeamlessDecode", "inputs": {
        "samples": ["10", 0], "vae": ["1", 2], "tile_size": 64, "overlap": 16, "circular": loop}}
    graphs.capture(prompt, "11c", "image", image=["11", 0])


def saved_pixels(entry) -> np.ndarray:
    import folder_paths
    assert entry["type"] == "temp"
    path = folder_paths.get_annotated_filepath(f"{entry['subfolder']}/{entry['filename']}".lstrip("/") + " [temp]")
    assert path.startswith(folder_paths.get_temp_directory()), path
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def sd15_colours(latent: torch.Tensor) -> torch.Tensor:
    """Oracle: ComfyUI's SD1.5 latent-preview colours, written out (scale 0.18215, the factors, no bias, then
    [-1, 1] to [0, 1]) with a plain matrix product."""
    import comfy.latent_formats
    sd15 = comfy.latent_formats.SD15()
    assert sd15.latent_rgb_factors_bias is None
    factors = torch.tensor(sd15.latent_rgb_factors)  # [4, 3]
    z = latent.double() * 0.18215
    rgb = z.permute(0, 2, 3, 1).reshape(-1, 4) @ factors.double()
    rgb = rgb.reshape(latent.shape[0], latent.shape[2], latent.shape[3], 3)
    return ((rgb + 1) / 2).clamp(0, 1)


def test_looped_panorama_and_circular_decode_name_their_previews_in_temp(host, captured):
    prompt = graphs.base()
    panorama(prompt, loop=True)
    result, _ = host.run(prompt)
    latent, image = captured["latent"], captured["image"]

    decoded = result["outputs"]["11"][UI_KEY]
    assert len(decoded) == 2  # one per panorama of the batch
    for index, entry in enumerate(decoded):
        assert (entry["width"], entry["height"], entry["approximate"]) == (WIDTH, HEIGHT, False)
        pixels = saved_pixels(entry)
        expected = (image[index].double().numpy() * 255).astype(np.int16)  # as ComfyUI's PNG writer truncates
        assert pixels.shape == (HEIGHT, WIDTH, 3)
        assert np.abs(pixels - expected).max() <= 1  # abs: 8-bit rounding of the decoded image

    sampled = result["outputs"]["10"][UI_KEY]
    assert len(sampled) == 2 and all(e["approximate"] for e in sampled)
    colours = (sd15_colours(latent).numpy() * 255).astype(np.int16)
    for index, entry in enumerate(sampled):
        assert (entry["width"], entry["height"]) == (WIDTH // 8, HEIGHT // 8)
        pixels = saved_pixels(entry)
        assert np.abs(pixels - colours[index]).max() <= 1, np.abs(pixels - colours[index]).max()  # abs: one 8-bit step
    assert decoded[0]["filename"] != sampled[0]["filename"]


def test_without_loop_the_nodes_send_no_viewer_output(host):
    prompt = graphs.base()
    panorama(prompt, loop=False)
    result, _ = host.run(prompt)
    assert UI_KEY not in (result["outputs"].get("10") or {})
    assert UI_KEY not in (result["outputs"].get("11") or {})


def test_a_very_wide_preview_is_downscaled_keeping_its_aspect(host):
    view = harness.loaded_module(f"{harness.PACK_NAME}.nodes.panorama.panorama_view")
    image = torch.rand(1, 64, view.MAX_WIDTH * 2, 3)
    entry = view.panorama_ui(image)[UI_KEY][0]
    assert (entry["width"], entry["height"]) == (view.MAX_WIDTH, 32)
    pixels = saved_pixels(entry)
    expected = torch.nn.functional.avg_pool2d(image.movedim(-1, 1), 2).movedim(1, -1)[0].numpy() * 255
    assert pixels.shape == (32, view.MAX_WIDTH, 3)
    assert np.abs(pixels - expected).max() <= 1.0 + 1e-6  # abs: one 8-bit step


@pytest.mark.parametrize("shape", [(1, 16, 4, 4), (1, 4, 4)])
def test_latents_without_matching_colour_factors_get_no_preview(host, shape):
    import comfy.latent_formats
    view = harness.loaded_module(f"{harness.PACK_NAME}.nodes.panorama.panorama_view")
    assert view.latent_ui(torch.zeros(shape), comfy.latent_formats.SD15()) is None
