"""guidance/gradop.py without ComfyUI: schedule levels, VP mapping, painting functions, the Adam loop."""
import math

import pytest
import torch
import torch.nn.functional as F

from guidance import gradop, loss_scale, palette as palettes
from devkit.tolerance import FORMULA, PATHS, assert_close_across_paths


def test_reference_levels_for_50_steps_strength_0_8():
    # int(50 * (1 - 0.8)) is 9 in float arithmetic: optimise after steps 9, 10, 11 -> sigma indices 10, 11, 12
    assert gradop.optimisation_indices(50, 0.8, 3) == [10, 11, 12]
    assert gradop.optimisation_indices(50, 0.7, 3) == [16, 17, 18]
    assert gradop.optimisation_indices(50, 1.0, 5) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("steps, strength, k", [(10, 0.2, 3), (50, 0.05, 3), (4, 0.8, 4)])
def test_too_many_iterative_steps_is_a_clear_error(steps, strength, k):
    with pytest.raises(ValueError, match="iterative_steps"):
        gradop.optimisation_indices(steps, strength, k)


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.01])
def test_strength_outside_0_1_is_rejected(strength):
    with pytest.raises(ValueError, match="strength"):
        gradop.optimisation_indices(50, strength, 3)


def test_vp_mapping_matches_the_reference_formulas():
    x0, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    sigma = 4.69
    alpha_bar = 1.0 / (1.0 + sigma ** 2)
    x = x0 + sigma * eps  # ComfyUI sampler space
    z_vp = math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * eps  # diffusers add_noise
    assert_close_across_paths(gradop.to_vp(x, sigma), z_vp, rtol=1e-5, why=FORMULA)
    # re-noising z* as clean: sqrt(a) z* + sqrt(1-a) eps, mapped back by sqrt(1 + sigma^2)
    z_star = torch.randn_like(x0)
    reference = (math.sqrt(alpha_bar) * z_star + math.sqrt(1 - alpha_bar) * eps) * math.sqrt(1 + sigma ** 2)
    assert_close_across_paths(gradop.renoise(z_star, eps, sigma), reference, rtol=1e-5, why=FORMULA)
    # flow models: x = (1 - s) x0 + s eps
    s = 0.6
    xf = (1 - s) * x0 + s * eps
    assert_close_across_paths(gradop.to_vp(xf, s, flow=True) * math.sqrt((1 - s) ** 2 + s ** 2), xf,
                              rtol=1e-5, why=FORMULA)
    assert_close_across_paths(gradop.renoise(x0, eps, s, flow=True), xf, rtol=1e-5, why=FORMULA)


def test_blur_parameters_scale_with_the_image():
    assert gradop.blur_parameters(512, 512) == (35, 7.0)
    assert gradop.blur_parameters(1024, 1024) == (69, 14.0)
    kernel, sigma = gradop.blur_parameters(64, 64)
    assert kernel == 3 and sigma == pytest.approx(0.875)


def test_gaussian_blur_matches_a_dense_2d_reference_with_reflect_border():
    image = torch.rand(2, 3, 40, 33, generator=torch.Generator().manual_seed(0))
    kernel, sigma = 9, 2.0
    g = gradop.gaussian_kernel1d(kernel, sigma)
    dense = (g[:, None] * g[None, :]).expand(3, 1, kernel, kernel)
    reference = F.conv2d(F.pad(image, (4, 4, 4, 4), mode="reflect"), dense, groups=3)
    assert_close_across_paths(gradop.gaussian_blur(image, kernel, sigma), reference, rtol=1e-5, why=FORMULA)
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert_close_across_paths(gradop.gaussian_blur(flat, 35, 7.0), flat,
                              rtol=1e-5, why=FORMULA)  # replicate fallback on tiny images


def test_median_filter_equals_brute_force_and_removes_specks():
    image = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    fast = gradop.median_filter(image, 3, max_elements=200)  # forces several row chunks
    padded = F.pad(image, (1, 1, 1, 1), mode="reflect")
    brute = torch.empty_like(image)
    for i in range(12):
        for j in range(10):
            brute[..., i, j] = padded[..., i:i + 3, j:j + 3].reshape(1, 3, 9).median(dim=-1).values
    assert_close_across_paths(fast, brute, rtol=1e-5, why=FORMULA)
    specks = torch.zeros(1, 3, 20, 20)
    specks[..., 5, 5] = 1.0
    assert gradop.median_filter(specks, 3).abs().max() == 0


def strokes(size=32):
    image = torch.zeros(1, 3, size, size)
    image[:, 0, : size // 2] = 0.9  # red top
    image[:, 2, size // 2:] = 0.8  # blue bottom
    image[:, 1, size // 2:, size // 2:] = 0.7  # cyan-ish corner
    return image


def stroke_colours(image: torch.Tensor) -> torch.Tensor:
    """The palette 'median + palette' snaps to: Stroke Regions to Words' colours of one [3,H,W] image, 0..1."""
    return torch.tensor(palettes.extract_palette(image.movedim(0, -1)).colours, dtype=torch.float32) / 255


def test_palette_finds_the_stroke_colours_and_soft_quantise_snaps_to_them():
    y = strokes()
    y[..., 0, 0] = torch.tensor([0.1, 0.5, 0.1])  # a one-pixel speck is dropped
    palette = stroke_colours(y[0])
    assert palette.shape == (3, 3)
    assert {tuple(round(v, 2) for v in c.tolist()) for c in palette} == {(0.9, 0, 0), (0, 0, 0.8), (0, 0.7, 0.8)}
    noisy = (strokes() + 0.05 * torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    snapped = gradop.soft_quantise(noisy, [palette])
    assert (snapped - strokes()).abs().mean() < 0.5 * (noisy - strokes()).abs().mean()


def binned_palette(image: torch.Tensor, max_colours: int = 16, min_fraction: float = 0.002) -> torch.Tensor:
    """The palette 'median + palette' used before it shared extract_palette (kept here to show the change):
    5-bit bins covering at least min_fraction of the image, each colour the mean of its bin."""
    pixels = image.reshape(3, -1).t().float()
    bins = (pixels * 31).round().long()
    keys = (bins[:, 0] * 32 + bins[:, 1]) * 32 + bins[:, 2]
    unique, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    keep = [int(k) for k in torch.argsort(counts, descending=True)[:max_colours]
            if counts[k] >= min_fraction * pixels.shape[0]]
    sums = torch.zeros(len(unique), 3).index_add_(0, inverse, pixels)
    return sums[keep] / counts[keep].unsqueeze(1)


def test_median_palette_snaps_to_the_exact_painted_colours_of_an_anti_aliased_painting():
    """What sharing Stroke Regions to Words' extractor changed for 'median + palette': on a two-colour
    painting with an anti-aliased edge and slightly uneven paint, the old binned palette also held the two
    edge shades and bin means instead of the painted colours; now the palette is exactly the two painted
    colours, so the loss pulls the edge towards red or blue instead of keeping it purple."""
    red, blue = torch.tensor([230, 40, 30]) / 255, torch.tensor([30, 60, 200]) / 255
    image = torch.empty(3, 64, 64)
    image[:, :, :31] = red.view(3, 1, 1)
    image[:, :, 33:] = blue.view(3, 1, 1)
    image[:, :, 31] = (2 * red + blue).view(3, 1) / 3  # the anti-aliased edge, 2 px
    image[:, :, 32] = (red + 2 * blue).view(3, 1) / 3
    image[0, ::4, :20] = 231 / 255  # uneven paint: a quarter of the rows one level lighter in part of the red
    image = (image * 255).round() / 255

    old = binned_palette(image)
    assert len(old) == 4  # red, blue and the two edge shades
    old_red = old[(old - red).norm(dim=1).argmin()]
    assert 1e-4 < (old_red - red).abs().max() < 1 / 255  # abs: colours in [0, 1]: a bin mean, not the painted red
    new = stroke_colours(image)
    torch.testing.assert_close(new, torch.stack([red, blue]), atol=0, rtol=0)  # exact: integer shades / 255

    f = gradop.painting_function("median + palette", 64, 64, image.unsqueeze(0))
    snapped = f(image.unsqueeze(0))[0]
    distance_to_paint = torch.stack([(snapped - c.view(3, 1, 1)).norm(dim=0) for c in (red, blue)]).amin(0)
    assert distance_to_paint.max() < 0.02  # every pixel, the edge included, is red or blue
    before = gradop.soft_quantise(gradop.median_filter(image.unsqueeze(0), 3), [old])[0]
    before_distance = torch.stack([(before - c.view(3, 1, 1)).norm(dim=0) for c in (red, blue)]).amin(0)
    assert before_distance[:, 31:33].min() > 0.1  # the old palette kept the edge purple


def test_painting_functions_are_differentiable():
    y = strokes(24)
    for name in gradop.PAINTING_FUNCTIONS:
        f = gradop.painting_function(name, 24, 24, y)
        x = torch.rand(1, 3, 24, 24, requires_grad=True)
        f(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="painting function"):
        gradop.painting_function("sharpen", 24, 24)


def toy_decoder(seed=0, dtype=torch.float32, gain=1.0):
    """A fixed random 'decoder' latent [B,4,h,w] -> image [B,3,8h,8w] in [0,1].

    conv 3x3, 8x upsample, then a full-resolution 1x1 conv of scale ``gain``, all in ``dtype``
    (a small gain at full resolution is where a real fp16 decoder's gradient underflows).
    """
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(3, 4, 3, 3, generator=gen) * 0.3).to(dtype)
    mix = (torch.eye(3) * gain).view(3, 3, 1, 1).to(dtype)

    def decode(z):
        out = F.interpolate(F.conv2d(z.to(dtype), weight, padding=1), scale_factor=8, mode="nearest")
        out = F.conv2d(out, mix).float()
        return ((out + 1) / 2).clamp(0, 1)
    return decode


def test_adam_loop_lowers_the_painting_loss_and_never_touches_its_inputs():
    z0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    target = torch.cat([strokes(), strokes().flip(-1)])
    before = z0.clone()
    f = gradop.painting_function("gaussian blur", 32, 32)
    result = gradop.optimise_strokes(z0, target, toy_decoder(), f, steps=12, lr=0.1)
    assert len(result.losses) == 13
    assert result.losses[-1] < 0.7 * result.losses[0]
    torch.testing.assert_close(z0, before, rtol=0, atol=0)  # exact: the input is left unchanged
    assert not result.z.requires_grad
    assert result.image.shape == (2, 3, 32, 32)
    # Adam moves each element by about lr per step
    assert (result.z - z0).abs().max() <= 12 * 0.1 + 1e-4  # abs: 12 steps of lr 0.1, a bound on the step


def test_zero_steps_is_the_identity():
    z0 = torch.randn(1, 4, 4, 4)
    result = gradop.optimise_strokes(z0, strokes(), toy_decoder(), lambda x: x, steps=0)
    torch.testing.assert_close(result.z, z0, rtol=0, atol=0)  # exact: no step, a copy
    assert len(result.losses) == 1


def test_pixels_outside_the_mask_do_not_enter_the_loss():
    z0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :, :16] = 1.0
    y1 = strokes()
    y2 = y1.clone()
    y2[..., :, 16:] = torch.rand(1, 3, 32, 16)  # differs only outside the mask
    identity = lambda x: x  # noqa: E731
    a = gradop.optimise_strokes(z0, y1, toy_decoder(), identity, 5, mask=mask)
    b = gradop.optimise_strokes(z0, y2, toy_decoder(), identity, 5, mask=mask)
    assert_close_across_paths(a.z, b.z, rtol=1e-5, why="targets that differ only outside the mask")
    c = gradop.optimise_strokes(z0, y2, toy_decoder(), identity, 5)
    assert not torch.allclose(a.z, c.z)


def test_proximity_term_keeps_the_gradop_solution_near_the_anchor():
    z0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    f = gradop.painting_function("gaussian blur", 32, 32)
    free = gradop.optimise_strokes(z0, strokes(), toy_decoder(), f, 30, anchor=z0, gamma=0.0)
    held = gradop.optimise_strokes(z0, strokes(), toy_decoder(), f, 30, anchor=z0, gamma=10.0)
    assert (held.z - z0).norm() < 0.5 * (free.z - z0).norm()


def test_loss_scaling_is_exact_in_fp32_and_rescues_an_fp16_gradient():
    z0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(6))
    f = gradop.painting_function("gaussian blur", 32, 32)
    plain = gradop.optimise_strokes(z0, strokes(), toy_decoder(), f, 6, loss_scale=1.0)
    scaled = gradop.optimise_strokes(z0, strokes(), toy_decoder(), f, 6, loss_scale=3 * 32 * 32)
    assert_close_across_paths(plain.z, scaled.z, rtol=1e-5, why=PATHS)  # scaled, then unscaled

    # A half-precision decoder: the unscaled per-pixel gradient 2(f - y)/N underflows.
    size = 256
    big_target = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(7)) * 0.01
    z_big = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(8))
    decode = toy_decoder(dtype=torch.half, gain=0.005)
    identity = lambda x: x  # noqa: E731

    def first_grad(scale):
        with torch.enable_grad():
            z = z_big.clone().requires_grad_(True)
            loss = gradop.painting_loss(identity(decode(z)), big_target).sum() * scale
            loss.backward()
            return z.grad / scale

    reference = first_grad(1.0).float()
    unscaled_zero = (reference == 0).float().mean()
    rescued = first_grad(loss_scale.default_loss_scale(True, 3 * size * size))
    assert unscaled_zero > 0.9  # the unscaled fp16 gradient is (almost) all zero
    assert (rescued == 0).float().mean() < 0.01
    result = gradop.optimise_strokes(z_big, big_target, decode, identity, 3,
                                     loss_scale=loss_scale.default_loss_scale(True, 3 * size * size))
    assert result.losses[-1] < result.losses[0]


def test_a_single_iterative_step_and_the_last_usable_step():
    assert gradop.optimisation_indices(50, 0.8, 1) == [10]
    # start 9: steps 9 .. 48 are the 40 before the last one (i < N - 1), levels 10 .. 49
    assert gradop.optimisation_indices(50, 0.8, 40) == list(range(10, 50))
    with pytest.raises(ValueError, match=r"^iterative_steps \(41\) is more than the sampler steps left after the "
                                         r"start that strength 0.8 selects \(40 of 50\)"):
        gradop.optimisation_indices(50, 0.8, 41)


def test_no_step_is_left_when_the_start_is_the_last_step():
    # int(10 * 0.9) = 9: the start is step 9, the last one, so nothing is left to optimise after
    with pytest.raises(ValueError, match=r"\(0 of 10\)"):
        gradop.optimisation_indices(10, 0.1, 1)
    with pytest.raises(ValueError, match="^iterative_steps must be at least 1, got 0$"):
        gradop.optimisation_indices(50, 0.8, 0)


def area_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Area (adaptive average) weights [n_out, n_in]: output i averages inputs floor(i n / m) .. ceil((i+1) n / m)."""
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        weights[i, lo:hi] = 1.0 / (hi - lo)
    return weights


def bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Bilinear weights [n_out, n_in] (half-pixel centres, no antialias): the two inputs around
    (i + 0.5) n / m - 0.5, clamped at the borders."""
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        source = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        low = min(int(math.floor(source)), n_in - 1)
        high = min(low + 1, n_in - 1)
        fraction = source - low
        weights[i, low] += 1 - fraction
        weights[i, high] += fraction
    return weights


def test_resize_image_area_averages_when_shrinking_and_is_bilinear_otherwise():
    image = torch.rand(2, 3, 10, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    assert gradop.resize_image(image, 10, 12) is image  # already the size: returned as is
    for h, w in ((4, 5), (10, 5), (4, 12)):  # shrinking one or both sides
        expected = torch.einsum("ij,bcjk,lk->bcil", area_matrix(10, h), image, area_matrix(12, w))
        assert_close_across_paths(gradop.resize_image(image, h, w), expected, rtol=1e-9, why=FORMULA)
    for h, w in ((16, 20), (7, 30), (10, 13)):  # growing a side
        expected = torch.einsum("ij,bcjk,lk->bcil", bilinear_matrix(10, h), image, bilinear_matrix(12, w))
        assert_close_across_paths(gradop.resize_image(image, h, w), expected, rtol=1e-9, why=FORMULA)


def test_painting_loss_is_the_per_image_mean_squared_error_inside_the_mask():
    output = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    target = torch.zeros(2, 1, 2, 2)
    assert_close_across_paths(gradop.painting_loss(output, target), torch.tensor([7.5, 0.0]), rtol=1e-5, why=FORMULA)
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    # image 0: (1 + 16) / 2 pixels; image 1: nothing inside, the count is clamped to 1
    assert_close_across_paths(gradop.painting_loss(output, target, mask), torch.tensor([8.5, 0.0]),
                              rtol=1e-5, why=FORMULA)
    three = output.expand(2, 3, 2, 2)
    assert_close_across_paths(gradop.painting_loss(three, target.expand(2, 3, 2, 2), mask), torch.tensor([8.5, 0.0]),
                              rtol=1e-5, why=FORMULA)  # a mask shared by the channels


def test_kernel_sizes_are_odd_and_scale_with_the_image():
    assert gradop.resolution_scale(512, 2048) == pytest.approx(2.0, rel=1e-12)
    assert gradop.median_kernel(512, 512) == 15
    assert gradop.median_kernel(1024, 1024) == 29  # 30 -> the odd size below
    assert gradop.median_kernel(64, 64) == 3  # never below 3
    assert gradop.blur_parameters(256, 256) == (17, 3.5)  # int(17.5) = 17
    assert loss_scale.default_loss_scale(False, 1000) == 1.0 and loss_scale.default_loss_scale(True, 1000) == 1000.0


def test_gaussian_kernel_is_a_normalised_sampled_gaussian():
    weights = gradop.gaussian_kernel1d(5, 1.5, dtype=torch.float64)
    raw = torch.tensor([math.exp(-0.5 * (k / 1.5) ** 2) for k in (-2, -1, 0, 1, 2)], dtype=torch.float64)
    assert_close_across_paths(weights, raw / raw.sum(), rtol=1e-12, why=FORMULA)
    assert gradop.gaussian_kernel1d(3, 1.0).dtype == torch.float32


def test_median_palette_needs_the_strokes():
    with pytest.raises(ValueError, match="^the 'median \\+ palette' painting function needs the stroke image$"):
        gradop.painting_function("median + palette", 24, 24)
    with pytest.raises(ValueError, match=r"^painting function must be one of \('gaussian blur', 'median', "
                                         r"'median \+ palette'\), got 'sharpen'$"):
        gradop.painting_function("sharpen", 24, 24)


def test_median_painting_function_is_the_median_filter_at_the_scaled_kernel():
    image = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    padded = F.pad(image, (1, 1, 1, 1), mode="reflect")  # kernel 3 at 40 px
    brute = padded.unfold(2, 3, 1).unfold(3, 3, 1).reshape(1, 3, 40, 40, 9).median(dim=-1).values
    torch.testing.assert_close(gradop.painting_function("median", 40, 40)(image), brute, rtol=0, atol=0)  # exact: a selection


def test_soft_quantise_is_a_softmax_over_squared_palette_distances():
    palette = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    pixel = torch.tensor([0.6, 0.0, 0.3])
    d = torch.tensor([((pixel - c) ** 2).sum() for c in palette])
    w = torch.softmax(-d / 0.05, dim=0)
    expected = (w[:, None] * palette).sum(0)
    out = gradop.soft_quantise(pixel.view(1, 3, 1, 1), [palette], temperature=0.05)
    assert_close_across_paths(out.view(3), expected, rtol=1e-5, why=FORMULA)


def test_optimise_strokes_reports_each_step_and_needs_autograd():
    z0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(10))
    seen = []
    result = gradop.optimise_strokes(z0, strokes(), toy_decoder(), lambda x: x, 3,
                                     on_step=lambda step, loss: seen.append((step, loss)))
    assert [step for step, _ in seen] == [1, 2, 3]
    assert [loss for _, loss in seen] == pytest.approx(result.losses[:3], rel=1e-12)
    with torch.no_grad(), pytest.raises(RuntimeError, match="^optimise_strokes needs autograd"):
        gradop.optimise_strokes(z0, strokes(), toy_decoder(), lambda x: x, 1)


def test_without_a_scaler_a_non_finite_gradient_raises_and_a_skipped_step_leaves_z_alone():
    """The pure default (a fixed scale) never takes a NaN step; a gradient function that returns None (the
    nodes' dynamic scaler giving up) skips the step: z and Adam's state stay, the step still counts."""
    z0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(11))
    with pytest.raises(FloatingPointError, match="^the loss gradient is not finite at loss scale 256$"):
        gradop.optimise_strokes(z0, strokes(), toy_decoder(), lambda x: x * float("inf"), 1, loss_scale=256.0)
    plain = loss_scale.fixed_scale_gradient(1.0)
    calls = []

    def second_skipped(loss_fn, inputs):
        calls.append(1)
        return None if len(calls) == 2 else plain(loss_fn, inputs)

    f = gradop.painting_function("gaussian blur", 32, 32)
    steps = []
    skipped = gradop.optimise_strokes(z0, strokes(), toy_decoder(), f, 3, gradient=second_skipped,
                                      on_step=lambda step, loss: steps.append(step))
    two = gradop.optimise_strokes(z0, strokes(), toy_decoder(), f, 2)
    assert skipped.skipped == 1 and steps == [1, 2, 3] and len(skipped.losses) == 4
    # steps 1 and 3 are Adam's steps 1 and 2 on the same gradients: as two steps without a skip (same ops)
    torch.testing.assert_close(skipped.z, two.z, rtol=1e-5, atol=1e-6 * float(two.z.abs().max()))  # abs: rtol 1e-5, atol scaled to the data
    assert skipped.losses[1] == skipped.losses[2]  # nothing moved at the skipped step: the same forward


def test_median_filter_with_a_five_pixel_window():
    image = torch.rand(1, 2, 9, 7, generator=torch.Generator().manual_seed(12))
    padded = F.pad(image, (2, 2, 2, 2), mode="reflect")
    brute = padded.unfold(2, 5, 1).unfold(3, 5, 1).reshape(1, 2, 9, 7, 25).median(dim=-1).values
    torch.testing.assert_close(gradop.median_filter(image, 5), brute, rtol=0, atol=0)  # exact: a selection


def test_soft_quantise_keeps_the_images_dtype():
    palette = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    out = gradop.soft_quantise(torch.rand(1, 3, 4, 4).half(), [palette])
    assert out.dtype == torch.float16
