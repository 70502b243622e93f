"""Unit tests of guidance/panorama.py (pure torch, no host)."""
import pytest
import torch

from guidance import panorama
from devkit.tolerance import BATCH, FORMULA, assert_close_across_paths


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
    torch.testing.assert_close(panorama.crop(x, window), expected, atol=0, rtol=0)  # exact: a gather


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
    assert_close_across_paths(panorama.merge(values, windows, (1, 4, height, width)), total / count,
                              rtol=1e-5, why=FORMULA)
    constant = [torch.full((1, 4, 16, 16), 3.0) for _ in windows]
    assert_close_across_paths(panorama.merge(constant, windows, (1, 4, height, width)),
                              torch.full((1, 4, height, width), 3.0),
                              rtol=1e-5, why=FORMULA)


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
    assert_close_across_paths(panorama.nudge(x.detach(), grad_x, w, sigma), (z - w * grad_z).detach() * scale,
                              rtol=1e-5, why=FORMULA)
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
    assert_close_across_paths(euler, expected, rtol=1e-5, why=FORMULA)


def test_batched_sync_gradients_equal_one_window_at_a_time():
    denoise, decode, distance = _toy(2)
    x = torch.randn(1, 4, 4, 16, generator=torch.Generator().manual_seed(3))
    windows = panorama.plan_windows(4, 16, 4, 4, 4, 2)
    one = panorama.synced_crops(x, windows, 2.0, 0.1, 3, denoise, denoise, decode, distance, batch=1)
    many = panorama.synced_crops(x, windows, 2.0, 0.1, 3, denoise, denoise, decode, distance, batch=5)
    for a, b in zip(one, many):
        assert_close_across_paths(a, b, rtol=1e-5, why=BATCH)
    # the anchor is not nudged: its copy is the crop itself (a gather, no arithmetic: exact)
    torch.testing.assert_close(one[3], panorama.crop(x, windows[3]), atol=0, rtol=0)  # exact: a slice


def test_weight_zero_is_the_plain_multidiffusion_average():
    denoise, decode, distance = _toy()
    x = torch.randn(1, 4, 4, 12)
    windows = panorama.plan_windows(4, 12, 4, 4, 2, 2)
    crops = panorama.synced_crops(x, windows, 2.0, 0.0, 1, denoise, None, None, None)
    x0 = panorama.merged_x0(crops, windows, x.shape, 2.0, denoise, 2)
    assert_close_across_paths(panorama.first_order_x0(x, x0, panorama.merge(crops, windows, x.shape), 2.0, 1.0), x0,
                              rtol=1e-5, why=FORMULA)


# --- the decode tiling helpers -------------------------------------------------------------------

def test_sync_every_kth_step_counts_from_the_first():
    # (i + 1) % 3 == 0: steps 2 and 5 of the first 7
    assert [panorama.syncs_at(i, 7, every=3) for i in range(8)] == [False, False, True, False, False, True,
                                                                     False, False]


def test_circular_pad_of_zero_one_and_more_than_the_width():
    x = torch.arange(10.0).view(1, 1, 1, 10)
    # gathers, no arithmetic: exact
    torch.testing.assert_close(panorama.circular_pad(x, 0), x, rtol=0, atol=0)  # exact: no padding
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
    assert_close_across_paths(panorama.blend_weights(100, (24, 56), 8), middle, rtol=1e-5, why=FORMULA)
    first = torch.tensor([1.0] * 24 + rise[::-1])  # starts at 0: no left ramp
    assert_close_across_paths(panorama.blend_weights(100, (0, 32), 8), first, rtol=1e-5, why=FORMULA)
    last = torch.tensor(rise + [1.0] * 24)  # ends at the length: no right ramp
    assert_close_across_paths(panorama.blend_weights(100, (68, 100), 8), last, rtol=1e-5, why=FORMULA)
    assert_close_across_paths(panorama.blend_weights(100, (1, 33), 8)[:8], torch.tensor(rise), rtol=1e-5, why=FORMULA)


def test_blend_weight_ramps_are_capped_at_half_a_short_tile_and_vanish_without_overlap():
    # length 6, overlap 8: ramps of 6 // 2 = 3 -> (k + 1) / 4
    assert_close_across_paths(panorama.blend_weights(100, (10, 16), 8),
                              torch.tensor([0.25, 0.5, 0.75, 0.75, 0.5, 0.25]),
                              rtol=1e-5, why=FORMULA)
    # length 7: ramps of 3, the middle weight stays 1
    assert_close_across_paths(panorama.blend_weights(100, (10, 17), 8),
                              torch.tensor([0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25]),
                              rtol=1e-5, why=FORMULA)
    assert_close_across_paths(panorama.blend_weights(100, (24, 56), 1), torch.tensor([0.5] + [1.0] * 30 + [0.5]),
                              rtol=1e-5, why=FORMULA)
    torch.testing.assert_close(panorama.blend_weights(100, (24, 56), 0), torch.ones(32), rtol=0, atol=0)  # exact: constant 1


# --- layouts: exact positions and the errors -----------------------------------------------------

def test_window_positions_step_by_the_stride_and_end_flush_with_the_edge():
    windows = panorama.plan_windows(40, 100, 32, 64, 16, 16)
    # integer layouts: exact
    assert [(w.top, w.left) for w in windows] == [(t, l) for t in (0, 8) for l in (0, 16, 32, 36)]
    assert {(w.height, w.width) for w in windows} == {(32, 64)}
    looped = panorama.plan_windows(32, 100, 32, 64, 16, 30, loop=True)
    assert [w.left for w in looped] == [0, 30, 60, 90]  # wrapping past the right edge
    assert [w.wraps(100) for w in looped] == [False, False, True, True]
    assert looped[3].columns(100).tolist() == [*range(90, 100), *range(0, 54)]
    assert not panorama.Window(0, 36, 32, 64).wraps(100)  # ends exactly at the edge


@pytest.mark.parametrize("sizes,message", [
    ((0, 64, 8, 8), "window height must be at least 1 latent pixel, got 0"),
    ((64, 0, 8, 8), "window width must be at least 1 latent pixel, got 0"),
    ((64, 64, 0, 8), "stride height must be at least 1 latent pixel, got 0"),
    ((64, 64, 8, -1), "stride width must be at least 1 latent pixel, got -1"),
    ((32, 64, 40, 8), r"the stride \(8x40\) must not be larger than the window \(64x32\): pixels between"),
    ((32, 64, 8, 72), r"the stride \(72x8\) must not be larger than the window \(64x32\)"),
])
def test_layout_errors_name_the_input_and_its_value(sizes, message):
    with pytest.raises(ValueError, match="^" + message):
        panorama.plan_windows(64, 200, *sizes)


def test_a_canvas_smaller_than_a_window_in_either_direction_is_an_error():
    with pytest.raises(ValueError, match=r"^the canvas \(50x64 latent pixels\) is smaller than one window "
                                         r"\(64x32\); make the canvas larger"):
        panorama.plan_windows(64, 50, 32, 64, 8, 8)
    with pytest.raises(ValueError, match=r"^the canvas \(200x31 latent pixels\)"):
        panorama.plan_windows(31, 200, 32, 64, 8, 8)
    assert len(panorama.plan_windows(32, 64, 32, 64, 8, 8)) == 1  # exactly one window fits


def test_anchor_is_the_middle_window_or_a_valid_index():
    assert panorama.anchor_index(4) == 2 and panorama.anchor_index(1) == 0
    assert panorama.anchor_index(13, 0) == 0 and panorama.anchor_index(13, 12) == 12
    for bad in (13, -2):
        with pytest.raises(ValueError, match=rf"^anchor must be -1 \(the middle window\) or a window index in "
                                             rf"0..12, got {bad}$"):
            panorama.anchor_index(13, bad)


def test_chunks_are_consecutive_groups_of_at_most_the_batch():
    assert panorama.chunks([3, 4, 5, 6, 7], 2) == [[3, 4], [5, 6], [7]]
    assert panorama.chunks(range(3), 0) == [[0], [1], [2]]  # a batch below 1 counts as 1
    assert panorama.chunks(range(3), 2.7) == [[0, 1], [2]]


def test_merge_reports_uncovered_pixels():
    windows = [panorama.Window(0, 0, 4, 4)]
    with pytest.raises(ValueError, match="^the windows leave some latent pixels uncovered$"):
        panorama.merge([torch.ones(1, 1, 4, 4)], windows, (1, 1, 4, 8))


def test_coverage_counts_windows_per_pixel():
    windows = [panorama.Window(0, 0, 2, 3), panorama.Window(1, 2, 2, 3)]
    expected = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 2.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(panorama.coverage(windows, 3, 5), expected, rtol=0, atol=0)  # exact: counts


def test_the_first_order_x0_reproduces_the_average_step():
    x, x0_mean, x_mean = torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([1.4])
    # D = x0 + r / (1 - r) (x_mean - x), r = 2 / 3 -> 0.5 + 2 * 0.4
    assert_close_across_paths(panorama.first_order_x0(x, x0_mean, x_mean, 3.0, 2.0), torch.tensor([1.3]),
                              rtol=1e-5, why=FORMULA)
    for sigma_next in (0.0, 3.0, 4.0):  # the last step, or no step down: the plain average
        torch.testing.assert_close(panorama.first_order_x0(x, x0_mean, x_mean, 3.0, sigma_next), x0_mean,
                                   rtol=0, atol=0)  # exact: returned as given


def test_vp_scale_and_flow_nudge():
    assert panorama.vp_scale(2.0) == pytest.approx(5.0, rel=1e-12)
    x, grad = torch.ones(3), torch.tensor([1.0, 2.0, -1.0])
    # flow: (1 - 0.25)^2 + 0.25^2 = 0.625
    assert_close_across_paths(panorama.nudge(x, grad, 2.0, 0.25, flow=True), 1.0 - 2.0 * 0.625 * grad,
                              rtol=1e-5, why=FORMULA)
    assert_close_across_paths(panorama.nudge(x, grad, 2.0, 0.25), 1.0 - 2.0 * 1.0625 * grad, rtol=1e-5, why=FORMULA)


@pytest.mark.parametrize("flow", [False, True])
def test_sync_step_on_a_quadratic_distance_has_the_closed_form(flow):
    """denoise and decode the identity, L = |x_v - x_anchor|^2: dL/dx_v = 2 (x_v - x_anchor), so each window
    moves to x_v - w s 2 (x_v - x_anchor) with s = vp_scale(sigma) (the VP step in sampler space)."""
    x = torch.randn(2, 3, 4, 20, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    windows = panorama.plan_windows(4, 20, 4, 8, 4, 4)  # lefts 0, 4, 8, 12
    identity = lambda xs, sigma, group: xs  # noqa: E731

    def distance(images, anchor):
        repeats = images.shape[0] // anchor.shape[0]
        return ((images - anchor.repeat(repeats, 1, 1, 1)) ** 2).flatten(1).sum(1)

    counts = []
    sigma, weight = 0.4, 0.05
    crops = panorama.synced_crops(x, windows, sigma, weight, 1, identity, identity, lambda v: v, distance,
                                  batch=2, flow=flow, loss_scale=8.0, on_batch=counts.append)
    scale = (1 - sigma) ** 2 + sigma ** 2 if flow else 1 + sigma ** 2
    anchor = x[..., 4:12]
    for index, window in enumerate(windows):
        own = x[..., window.left:window.left + 8]
        expected = own if index == 1 else own - weight * scale * 2 * (own - anchor)
        assert_close_across_paths(crops[index], expected, rtol=1e-12, why=FORMULA)
    assert counts == [2, 1]  # the three other windows in groups of 2

    merged_counts = []
    x0 = panorama.merged_x0(crops, windows, x.shape, sigma, identity, batch=3, on_batch=merged_counts.append)
    assert merged_counts == [3, 1]
    assert_close_across_paths(x0, panorama.merge(crops, windows, x.shape), rtol=1e-5, why=FORMULA)


def test_a_single_window_or_weight_zero_returns_the_plain_crops():
    x = torch.randn(1, 4, 4, 8)
    windows = panorama.plan_windows(4, 8, 4, 8, 4, 4)
    crops = panorama.synced_crops(x, windows, 1.0, 5.0, 0, None, None, None, None)
    torch.testing.assert_close(crops[0], x, rtol=0, atol=0)  # exact: a slice


def test_first_order_x0_below_sigma_one_and_in_x0s_dtype():
    x, x0_mean, x_mean = torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([1.4])
    # r = 0.5 / 1.0: r / (1 - r) = 1 -> 0.5 + 0.4
    assert_close_across_paths(panorama.first_order_x0(x, x0_mean, x_mean, 1.0, 0.5), torch.tensor([0.9]),
                              rtol=1e-5, why=FORMULA)
    out = panorama.first_order_x0(x.double(), x0_mean, x_mean.double(), 3.0, 2.0)
    assert out.dtype == torch.float32


def test_merge_returns_the_values_dtype():
    windows = panorama.plan_windows(4, 8, 4, 4, 4, 4)
    values = [torch.full((1, 1, 4, 4), 0.25, dtype=torch.float16), torch.full((1, 1, 4, 4), 0.5, dtype=torch.float16)]
    out = panorama.merge(values, windows, (1, 1, 4, 8))
    assert out.dtype == torch.float16
    expected = torch.cat([torch.full((1, 1, 4, 4), 0.25), torch.full((1, 1, 4, 4), 0.5)], dim=-1)
    assert_close_across_paths(out.float(), expected, rtol=1e-3, why=FORMULA)


def test_merged_x0_denoises_one_window_at_a_time_by_default_and_passes_the_groups():
    x = torch.randn(2, 1, 4, 12, generator=torch.Generator().manual_seed(6))
    windows = panorama.plan_windows(4, 12, 4, 4, 4, 4)  # three windows
    crops = [panorama.crop(x, w) for w in windows]
    groups = []

    def denoise(xs, sigma, group):
        groups.append(list(group))
        return xs * 0.5

    out = panorama.merged_x0(crops, windows, x.shape, 1.0, denoise)
    assert groups == [[0], [1], [2]]
    assert_close_across_paths(out, x * 0.5, rtol=1e-5, why=FORMULA)


def test_one_pixel_windows_and_strides_are_valid():
    windows = panorama.plan_windows(2, 3, 1, 1, 1, 1)
    assert [(w.top, w.left) for w in windows] == [(t, l) for t in range(2) for l in range(3)]  # integers


def test_two_windows_sync_one_window_at_a_time_by_default_with_their_groups():
    x = torch.randn(1, 4, 4, 12, generator=torch.Generator().manual_seed(7))
    windows = panorama.plan_windows(4, 12, 4, 6, 4, 6)  # lefts 0 and 6: two windows
    groups, counts = [], []

    def denoise(xs, sigma, group):
        groups.append(list(group))
        return xs

    def distance(images, anchor):
        return ((images - anchor.repeat(images.shape[0] // anchor.shape[0], 1, 1, 1)) ** 2).flatten(1).sum(1)

    crops = panorama.synced_crops(x, windows, 0.5, 0.1, 0, denoise, denoise, lambda v: v, distance,
                                  on_batch=counts.append)
    assert groups == [[0], [1]] and counts == [1]  # the anchor's own image, then the other window
    own, anchor = x[..., 6:12], x[..., 0:6]
    assert_close_across_paths(crops[1], own - 0.1 * 1.25 * 2 * (own - anchor), rtol=1e-5, why=FORMULA)
    three = panorama.plan_windows(4, 12, 4, 4, 4, 4)
    counts.clear()
    panorama.synced_crops(x, three, 0.5, 0.1, 1, denoise, denoise, lambda v: v, distance, on_batch=counts.append)
    assert counts == [1, 1]  # default batch: one window per group
