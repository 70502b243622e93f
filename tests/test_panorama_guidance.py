"""Unit tests of guidance/panorama.py (pure torch, no host)."""
import pytest
import torch

from guidance import panorama


@pytest.mark.parametrize("height,width,window,stride,loop", [
    (64, 256, 64, 16, False),   # the reference's 512x2048 at stride 16: 13 windows
    (64, 384, 64, 16, False),   # 512x3072: 21 windows
    (67, 203, 64, 24, False),   # odd sizes: the last window is flush with the edge
    (64, 256, 64, 16, True),    # 360-degree loop: windows wrap round the right edge
    (160, 200, 64, 40, True),   # 2-D layout with wrap
    (64, 64, 64, 8, False),     # one window
])
def test_windows_cover_every_pixel(height, width, window, stride, loop):
    windows = panorama.plan_windows(height, width, window, window, stride, stride, loop)
    count = panorama.coverage(windows, height, width)
    assert bool((count >= 1).all())
    for w in windows:
        assert 0 <= w.top and w.top + w.height <= height
        assert 0 <= w.left < width and (loop or w.left + w.width <= width)
    if (height, width, stride, loop) == (64, 256, 16, False):
        assert len(windows) == 13
    if (height, width, stride, loop) == (64, 384, 16, False):
        assert len(windows) == 21


def test_loop_windows_make_every_column_boundary_interior_the_same_number_of_times():
    windows = panorama.plan_windows(64, 256, 64, 64, 16, 16, loop=True)
    count = panorama.coverage(windows, 64, 256)
    assert bool((count == 4).all())  # 64 / 16 windows over every column, the seam included
    assert any(w.wraps(256) for w in windows)


def test_crop_of_a_wrapping_window_equals_a_roll():
    x = torch.randn(2, 4, 8, 40)
    window = panorama.Window(top=0, left=30, height=8, width=16)
    expected = torch.roll(x, shifts=-30, dims=-1)[..., :16]
    torch.testing.assert_close(panorama.crop(x, window), expected, atol=0, rtol=0)  # a gather: exact


def test_merge_is_the_per_pixel_average_of_an_independent_accumulation():
    height, width = 16, 50
    windows = panorama.plan_windows(height, width, 16, 16, 8, 6, loop=True)
    values = [torch.randn(1, 4, 16, 16) for _ in windows]
    total = torch.zeros(1, 4, height, width)
    count = torch.zeros(height, width)
    for value, w in zip(values, windows):
        for j in range(w.width):
            column = (w.left + j) % width
            total[..., w.top:w.top + w.height, column] += value[..., j]
            count[w.top:w.top + w.height, column] += 1
    torch.testing.assert_close(panorama.merge(values, windows, (1, 4, height, width)), total / count,
                               atol=1e-6, rtol=1e-6)
    constant = [torch.full((1, 4, 16, 16), 3.0) for _ in windows]
    torch.testing.assert_close(panorama.merge(constant, windows, (1, 4, height, width)),
                               torch.full((1, 4, height, width), 3.0))


def test_bad_layouts_name_what_is_wrong():
    with pytest.raises(ValueError, match="smaller than one window"):
        panorama.plan_windows(32, 200, 64, 64, 16, 16)
    with pytest.raises(ValueError, match="must not be larger than the window"):
        panorama.plan_windows(64, 200, 64, 64, 72, 72)
    with pytest.raises(ValueError, match="anchor must be -1"):
        panorama.anchor_index(13, 13)
    assert panorama.anchor_index(13) == 6 and panorama.anchor_index(21) == 10


def test_sync_schedule_and_nudge_follow_the_reference():
    assert [panorama.syncs_at(i, 10) for i in (0, 9, 10, 49)] == [True, True, False, False]
    assert [panorama.syncs_at(i, 10, every=2) for i in range(4)] == [False, True, False, True]
    assert panorama.sync_weight(0) == 20.0
    assert panorama.sync_weight(9) == pytest.approx(20 * 0.95 ** 9)
    # the VP step z <- z - w dL/dz equals x <- x - w (1 + sigma^2) dL/dx with z = x / sqrt(1 + sigma^2)
    sigma, w = 4.69, 3.0
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    target = torch.randn_like(x)
    scale = (1 + sigma ** 2) ** 0.5
    z = (x / scale).detach().requires_grad_(True)
    loss_z = ((z * scale - target) ** 2).sum()
    (grad_z,) = torch.autograd.grad(loss_z, z)
    (grad_x,) = torch.autograd.grad(((x - target) ** 2).sum(), x)
    torch.testing.assert_close(panorama.nudge(x.detach(), grad_x, w, sigma), (z - w * grad_z).detach() * scale)
    assert panorama.vp_scale(0.3, flow=True) == pytest.approx(0.7 ** 2 + 0.3 ** 2)


def test_circular_pad_and_tiles():
    x = torch.arange(10.0).view(1, 1, 1, 10)
    padded = panorama.circular_pad(x, 2)
    assert padded[0, 0, 0].tolist() == [8, 9, *range(10), 0, 1]
    spans = panorama.tiles(100, 32, 8)
    assert spans[0] == (0, 32) and spans[-1][1] == 100
    covered = torch.zeros(100)
    for span in spans:
        covered[span[0]:span[1]] += panorama.blend_weights(100, span, 8)
    assert bool((covered > 0).all())


# --- the sync step and the merge over callables (toy denoiser/decoder/distance) --------------------

def _toy(seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(4, 4, 1, 1, generator=generator) * 0.3

    def denoise(xs, sigma, group):
        return torch.tanh(torch.nn.functional.conv2d(xs, weight)) * 0.5 + xs / (1 + sigma)

    def decode(x0):
        return torch.sigmoid(torch.nn.functional.interpolate(x0[:, :3], scale_factor=2))

    def distance(images, anchor):
        repeats = images.shape[0] // anchor.shape[0]
        return ((images - anchor.repeat(repeats, 1, 1, 1)) ** 2).flatten(1).mean(1)

    return denoise, decode, distance


def _oracle_step(x, windows, sigma, sigma_next, weight, anchor, denoise, decode, distance):
    """Per window: nudge its own copy, Euler step it, average the stepped windows."""
    total, count = torch.zeros_like(x), torch.zeros_like(x)
    anchor_image = decode(denoise(panorama.crop(x, windows[anchor]), sigma, [anchor])).detach()
    for index, window in enumerate(windows):
        xv = panorama.crop(x, window).clone()
        if weight and index != anchor:
            xg = xv.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(distance(decode(denoise(xg, sigma, [index])), anchor_image).sum(), xg)
            xv = xv - weight * (1 + sigma ** 2) * grad
        x0 = denoise(xv, sigma, [index])
        stepped = x0 + sigma_next / sigma * (xv - x0)
        columns = window.columns(x.shape[-1])
        total[..., window.top:window.top + window.height, :].index_add_(-1, columns, stepped)
        count[..., window.top:window.top + window.height, :].index_add_(-1, columns, torch.ones_like(stepped))
    return total / count


@pytest.mark.parametrize("loop,batch", [(False, 1), (False, 3), (True, 2)])
def test_one_euler_step_on_the_corrected_x0_equals_the_average_of_the_windows_steps(loop, batch):
    denoise, decode, distance = _toy()
    x = torch.randn(2, 4, 6, 20, generator=torch.Generator().manual_seed(1))
    windows = panorama.plan_windows(6, 20, 4, 4, 2, 4, loop)
    anchor = panorama.anchor_index(len(windows))
    sigma, sigma_next = 3.0, 2.2
    crops = panorama.synced_crops(x, windows, sigma, 0.05, anchor, denoise, denoise, decode, distance, batch)
    x0 = panorama.merged_x0(crops, windows, x.shape, sigma, denoise, batch)
    d = panorama.first_order_x0(x, x0, panorama.merge(crops, windows, x.shape), sigma, sigma_next)
    euler = x + (x - d) / sigma * (sigma_next - sigma)
    expected = _oracle_step(x, windows, sigma, sigma_next, 0.05, anchor, denoise, decode, distance)
    assert torch.allclose(euler, expected, atol=1e-5, rtol=1e-5)


def test_batched_sync_gradients_equal_one_window_at_a_time():
    denoise, decode, distance = _toy(2)
    x = torch.randn(1, 4, 4, 16, generator=torch.Generator().manual_seed(3))
    windows = panorama.plan_windows(4, 16, 4, 4, 4, 2)
    one = panorama.synced_crops(x, windows, 2.0, 0.1, 3, denoise, denoise, decode, distance, batch=1)
    many = panorama.synced_crops(x, windows, 2.0, 0.1, 3, denoise, denoise, decode, distance, batch=5)
    for a, b in zip(one, many):
        assert torch.allclose(a, b, atol=1e-6)
    # the anchor is not nudged: its copy is the crop itself (a gather, no arithmetic: exact)
    torch.testing.assert_close(one[3], panorama.crop(x, windows[3]), atol=0, rtol=0)


def test_weight_zero_is_the_plain_multidiffusion_average():
    denoise, decode, distance = _toy()
    x = torch.randn(1, 4, 4, 12)
    windows = panorama.plan_windows(4, 12, 4, 4, 2, 2)
    crops = panorama.synced_crops(x, windows, 2.0, 0.0, 1, denoise, None, None, None)
    x0 = panorama.merged_x0(crops, windows, x.shape, 2.0, denoise, 2)
    torch.testing.assert_close(panorama.first_order_x0(x, x0, panorama.merge(crops, windows, x.shape), 2.0, 1.0), x0,
                               atol=1e-6, rtol=1e-6)


# --- the decode tiling helpers -------------------------------------------------------------------

def test_sync_every_kth_step_counts_from_the_first():
    # (i + 1) % 3 == 0: steps 2 and 5 of the first 7
    assert [panorama.syncs_at(i, 7, every=3) for i in range(8)] == [False, False, True, False, False, True,
                                                                     False, False]


def test_circular_pad_of_zero_one_and_more_than_the_width():
    x = torch.arange(10.0).view(1, 1, 1, 10)
    # gathers, no arithmetic: exact
    torch.testing.assert_close(panorama.circular_pad(x, 0), x, rtol=0, atol=0)
    assert panorama.circular_pad(x, 1)[0, 0, 0].tolist() == [9, *range(10), 0]
    assert panorama.circular_pad(x, 15)[0, 0, 0].tolist() == [*range(10)] * 3  # at most the width each side


def test_tiles_of_a_short_length_and_of_a_large_overlap():
    assert panorama.tiles(20, 32, 8) == [(0, 20)]
    assert panorama.tiles(32, 32, 8) == [(0, 32)]
    assert panorama.tiles(6, 4, 3) == [(0, 4), (1, 5), (2, 6)]  # stride tile - overlap = 1
    assert panorama.tiles(6, 4, 9) == [(0, 4), (1, 5), (2, 6)]  # the stride is at least 1


def test_blend_weights_are_linear_ramps_over_the_overlap_at_inner_edges():
    rise = [1 / 9, 2 / 9, 3 / 9, 4 / 9, 5 / 9, 6 / 9, 7 / 9, 8 / 9]  # (k + 1) / (overlap + 1)
    middle = torch.tensor(rise + [1.0] * 16 + rise[::-1])
    torch.testing.assert_close(panorama.blend_weights(100, (24, 56), 8), middle, rtol=1e-6, atol=1e-7)
    first = torch.tensor([1.0] * 24 + rise[::-1])  # starts at 0: no left ramp
    torch.testing.assert_close(panorama.blend_weights(100, (0, 32), 8), first, rtol=1e-6, atol=1e-7)
    last = torch.tensor(rise + [1.0] * 24)  # ends at the length: no right ramp
    torch.testing.assert_close(panorama.blend_weights(100, (68, 100), 8), last, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(panorama.blend_weights(100, (1, 33), 8)[:8], torch.tensor(rise), rtol=1e-6,
                               atol=1e-7)


def test_blend_weight_ramps_are_capped_at_half_a_short_tile_and_vanish_without_overlap():
    # length 6, overlap 8: ramps of 6 // 2 = 3 -> (k + 1) / 4
    torch.testing.assert_close(panorama.blend_weights(100, (10, 16), 8),
                               torch.tensor([0.25, 0.5, 0.75, 0.75, 0.5, 0.25]), rtol=1e-6, atol=1e-7)
    # length 7: ramps of 3, the middle weight stays 1
    torch.testing.assert_close(panorama.blend_weights(100, (10, 17), 8),
                               torch.tensor([0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(panorama.blend_weights(100, (24, 56), 1),
                               torch.tensor([0.5] + [1.0] * 30 + [0.5]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(panorama.blend_weights(100, (24, 56), 0), torch.ones(32), rtol=0, atol=0)
