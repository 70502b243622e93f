"""Unit tests of guidance/semantic.py (pure torch, no host)."""
import math

import pytest
import torch

from guidance import semantic
from devkit.tolerance import FORMULA, assert_close_across_paths


def test_spherical_distance_is_half_the_squared_angle():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    v = torch.tensor([[0.0, 3.0], [1.0, 1.0], [5.0, 0.0]])
    expected = torch.tensor([(math.pi / 2) ** 2 / 2, (math.pi / 4) ** 2 / 2, 0.0])
    assert_close_across_paths(semantic.spherical_distance(u, v), expected, rtol=1e-5, why=FORMULA)


def test_gram_is_per_sample_and_a_batch_of_two_equals_two_batches_of_one():
    features = torch.randn(2, 5, 4, 3)
    both = semantic.gram(features)
    for b in range(2):
        flat = features[b].reshape(5, -1)
        assert_close_across_paths(both[b], flat @ flat.t() / (5 * 12), rtol=1e-5, why=FORMULA)
        assert_close_across_paths(semantic.gram(features[b:b + 1])[0], both[b], rtol=1e-5, why=FORMULA)
    tokens = torch.randn(2, 7, 5)  # ViT tokens [B, N, C]
    assert_close_across_paths(semantic.gram(tokens), semantic.gram(tokens.transpose(1, 2).unsqueeze(-1)),
                              rtol=1e-5, why=FORMULA)


def test_style_loss_is_zero_at_the_target_and_per_sample():
    features = [torch.randn(2, 4, 6, 6), torch.randn(2, 8, 3, 3)]
    targets = [semantic.gram(f[:1]) for f in features]
    loss = semantic.style_loss(features, targets)
    assert loss.shape == (2,) and float(loss[0]) == pytest.approx(0.0, abs=1e-12) and float(loss[1]) > 0


def test_views_are_differentiable_and_view_major():
    image = torch.rand(2, 3, 40, 48, requires_grad=True)
    generator = torch.Generator().manual_seed(0)
    views = semantic.make_views(image, 16, 3, generator)
    assert views.shape == (6, 3, 16, 16)
    views.sum().backward()
    assert image.grad is not None and float(image.grad.abs().sum()) > 0
    whole = semantic.make_views(image.detach(), 16, 0, generator)
    assert whole.shape == (2, 3, 16, 16)
    assert semantic.view_mean(torch.arange(6.0), 2).tolist() == [2.0, 3.0]  # (0+2+4)/3, (1+3+5)/3


def test_normalised_step_has_the_size_of_the_cfg_correction_and_the_paper_step_scales_with_sigma_squared():
    denoised = torch.randn(2, 4, 8, 8)
    cond, uncond = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    grad = torch.randn(2, 4, 8, 8) * torch.tensor([1e-6, 10.0]).view(2, 1, 1, 1)
    out = semantic.guided_x0(denoised, grad, 0.5, 3.0, "normalised", cond, uncond)
    step = denoised - out
    assert_close_across_paths(semantic.rms(step), 0.5 * semantic.rms(cond - uncond), rtol=1e-5, why=FORMULA)
    assert_close_across_paths(semantic.guided_x0(denoised, grad, 0.0, 3.0, "normalised", cond, uncond), denoised,
                              rtol=1e-5, why=FORMULA)
    assert_close_across_paths(semantic.guided_x0(denoised, grad, 2.0, 3.0, "paper"), denoised - 2.0 * 9.0 * grad,
                              rtol=1e-5, why=FORMULA)
    # cfg 1: no CFG correction, the predicted noise's size stands in
    noisy = denoised + 3.0 * torch.randn_like(denoised)
    out = semantic.guided_x0(denoised, grad, 0.5, 3.0, "normalised", cond, cond, noisy=noisy)
    assert_close_across_paths(semantic.rms(denoised - out), 0.5 * semantic.rms(noisy - denoised),
                              rtol=1e-5, why=FORMULA)
    with pytest.raises(ValueError, match="step mode"):
        semantic.guided_x0(denoised, grad, 1.0, 1.0, "exact")


def test_step_gating_by_index_and_by_sigma():
    assert semantic.step_indices(10, 0.2, 0.7) == {2, 3, 4, 5, 6}
    assert semantic.step_indices(10, 0.2, 0.7, every=2) == {2, 4, 6}
    assert semantic.step_indices(10, 0.0, 1.0) == set(range(10))
    with pytest.raises(ValueError, match="start_percent"):
        semantic.step_indices(10, 0.8, 0.2)
    sigmas = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.0])
    assert semantic.sigma_step_index(7.0, sigmas) == 1
    assert semantic.sigma_step_index(5.0, sigmas) is None  # an intermediate evaluation (Heun): not a step


def test_text_and_content_losses_add_with_their_weights():
    emb = torch.randn(6, 8)
    text, content = torch.randn(1, 8), torch.randn(1, 8)
    both = semantic.text_image_loss(emb, text, content, 2, 2.0, 3.0)
    only_text = semantic.text_image_loss(emb, text, None, 2, 2.0, 3.0)
    only_content = semantic.text_image_loss(emb, None, content, 2, 2.0, 3.0)
    assert_close_across_paths(both, only_text + only_content, rtol=1e-5, why=FORMULA)
    expected = 2.0 * semantic.spherical_distance(emb, text.expand(6, 8)).view(3, 2).mean(0)
    assert_close_across_paths(only_text, expected, rtol=1e-5, why=FORMULA)


def test_gate_by_sigma_window_then_every_kth_step():
    levels = torch.tensor([14.0, 8.0, 5.0, 3.0, 2.0, 1.0, 0.0])
    assert semantic.gated_indices(levels, 1e9, 0.0) == {0, 1, 2, 3, 4, 5}
    assert semantic.gated_indices(levels, 8.0, 2.0) == {1, 2, 3, 4}
    assert semantic.gated_indices(levels, 8.0, 2.0, every=2) == {1, 3}
    assert semantic.gated_indices(levels, 4.0, 4.0) == set()
    with pytest.raises(ValueError, match="every"):
        semantic.gated_indices(levels, 8.0, 2.0, every=0)


def test_style_layers_relative_style_loss_and_view_layout():
    assert semantic.style_layer_indices(12) == [2, 4, 6]
    assert semantic.style_layer_indices(2) == [0, 1]
    features = [torch.randn(2, 4, 6, 6)]
    targets = [semantic.gram(torch.randn(1, 4, 6, 6))]
    plain = semantic.style_loss(features, targets)
    relative = semantic.style_loss(features, targets, relative=True)
    assert_close_across_paths(relative, plain / targets[0].pow(2).mean(), rtol=1e-5, why=FORMULA)
    target = torch.arange(2.0).view(2, 1)
    assert semantic.repeat_views(target, 3, 2).flatten().tolist() == [0, 1, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="batch"):
        semantic.repeat_views(torch.zeros(3, 1), 2, 2)


def test_mask_keeps_the_loss_gradient_inside_the_region():
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8] = 1.0
    semantic.masked_for_loss(image, mask).pow(2).sum().backward()
    assert float(image.grad[..., 8:].abs().sum()) == 0.0 and float(image.grad[..., :8].abs().sum()) > 0
    cells = semantic.latent_mask(mask, (2, 2))
    assert cells.flatten().tolist() == [1.0, 0.0, 1.0, 0.0]


# --- reference helpers (plain torch, written from the formulas) ---------------------------------------

def rms_reference(x: torch.Tensor) -> torch.Tensor:
    """sqrt(mean(x^2)) of each sample, shaped [B, 1, 1, 1]."""
    return x.double().pow(2).mean(dim=(1, 2, 3)).sqrt().view(-1, 1, 1, 1)


def resize_matrix(n_in: int, n_out: int, antialias: bool) -> torch.Tensor:
    """Rows of triangle-filter weights [n_out, n_in] (pixel centres at j + 0.5, half-pixel mapping): linear
    interpolation for bilinear, widened to the scale factor for an antialiased shrink, renormalised at borders."""
    scale = n_in / n_out
    support = max(scale, 1.0) if antialias else 1.0
    centres = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    weights = (1 - ((torch.arange(n_in, dtype=torch.float64) + 0.5)[None] - centres[:, None]).abs() / support)
    weights = weights.clamp_min(0)
    return weights / weights.sum(1, keepdim=True)


def block_mean(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean of each factor x factor block of [B, C, H, W]."""
    b, c, h, w = image.shape
    return image.reshape(b, c, h // factor, factor, w // factor, factor).mean(dim=(3, 5))


# --- normalise, rms, spherical distance --------------------------------------------------------------

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def test_normalise_is_per_channel_mean_and_std_in_the_images_precision():
    image = torch.rand(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = torch.empty_like(image)
    for c in range(3):
        expected[:, c] = (image[:, c] - CLIP_MEAN[c]) / CLIP_STD[c]
    # float64 in, float64 arithmetic: agrees to rounding (a float32 mean/std would be off by ~1e-8)
    assert_close_across_paths(semantic.normalise(image, CLIP_MEAN, CLIP_STD), expected, rtol=1e-12, why=FORMULA)
    half = semantic.normalise(image.half(), CLIP_MEAN, CLIP_STD)
    assert half.dtype == torch.float16
    assert_close_across_paths(half, expected, rtol=2e-2, why=FORMULA)  # float16 arithmetic: about 10 ulps


def test_normalise_builds_its_constants_on_the_images_device():
    # the meta device (shapes only) stands in for an accelerator: a CPU constant would not combine with it
    out = semantic.normalise(torch.empty(1, 3, 4, 4, device="meta"), CLIP_MEAN, CLIP_STD)
    assert out.device.type == "meta" and out.shape == (1, 3, 4, 4)


def test_rms_is_per_sample():
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0]]).view(2, 1, 1, 2)
    assert_close_across_paths(semantic.rms(x), torch.tensor([12.5 ** 0.5, 0.5 ** 0.5]).view(2, 1, 1, 1),
                              rtol=1e-5, why=FORMULA)


def test_spherical_distance_is_per_row_of_the_last_dimension():
    u = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    v = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2))
    cosine = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
    expected = torch.arccos(cosine.double()) ** 2 / 2  # theta^2 / 2
    assert_close_across_paths(semantic.spherical_distance(u, v).double(), expected, rtol=1e-4, why=FORMULA)


def test_opposite_embeddings_are_pi_squared_over_two_never_nan():
    # a half chord of 1 can round to 1 + 1e-7 for exactly opposite unit vectors; arcsin must not see it
    # (with this seed two rows do); arcsin is ill-conditioned at 1, so float32 rounding there costs ~1e-3
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(256, 5, generator=gen) * torch.rand(256, 1, generator=gen) * 100
    distance = semantic.spherical_distance(u, -0.3 * u)
    assert_close_across_paths(distance, torch.full((256,), math.pi ** 2 / 2), rtol=2e-3, why=FORMULA)


# --- the guided x0 step ------------------------------------------------------------------------------

def _step_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    denoised, grad, cond, uncond = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(4))
    return denoised, grad * torch.tensor([1e-3, 5.0]).view(2, 1, 1, 1), cond, uncond


def test_normalised_step_is_the_default_and_moves_down_the_gradient():
    denoised, grad, cond, uncond = _step_inputs()
    out = semantic.guided_x0(denoised, grad, 0.5, 3.0, cond_denoised=cond, uncond_denoised=uncond)
    expected = denoised.double() - 0.5 * grad.double() / rms_reference(grad) * rms_reference(cond - uncond)
    assert_close_across_paths(out.double(), expected, rtol=1e-5, why=FORMULA)


def test_a_small_cfg_correction_is_used_as_it_is_not_replaced_by_the_noise_size():
    denoised, grad, cond, _ = _step_inputs(1)
    uncond = cond + 0.1 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))  # rms ~0.1
    noisy = denoised + 5.0 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    out = semantic.guided_x0(denoised, grad, 0.5, 5.0, "normalised", cond, uncond, noisy=noisy)
    expected = denoised.double() - 0.5 * grad.double() / rms_reference(grad) * rms_reference(cond - uncond)
    assert_close_across_paths(out.double(), expected, rtol=1e-5, why=FORMULA)


def test_without_both_cfg_predictions_the_noise_size_stands_in_or_nothing_moves():
    denoised, grad, cond, _ = _step_inputs(2)
    noisy = denoised + 3.0 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    expected = denoised.double() - 0.5 * grad.double() / rms_reference(grad) * rms_reference(noisy - denoised)
    for given in ({}, {"cond_denoised": cond}, {"uncond_denoised": cond}):
        out = semantic.guided_x0(denoised, grad, 0.5, 3.0, "normalised", noisy=noisy, **given)
        assert_close_across_paths(out.double(), expected, rtol=1e-5, why=FORMULA)
    # no CFG correction and no noisy input: no size to step by, x0 is unchanged
    assert_close_across_paths(semantic.guided_x0(denoised, grad, 0.5, 3.0), denoised, rtol=1e-5, why=FORMULA)


def test_paper_step_takes_a_sigma_per_sample():
    denoised, grad, _, _ = _step_inputs(3)
    sigma = torch.tensor([2.0, 0.5])
    out = semantic.guided_x0(denoised, grad, 3.0, sigma, "paper")
    expected = denoised - 3.0 * torch.tensor([4.0, 0.25]).view(2, 1, 1, 1) * grad
    assert_close_across_paths(out, expected, rtol=1e-5, why=FORMULA)


@pytest.mark.parametrize("mode", semantic.STEP_MODES)
def test_the_step_keeps_x0s_dtype(mode):
    denoised, grad, cond, uncond = _step_inputs(4)
    out = semantic.guided_x0(denoised.half(), grad.half(), 0.5, 1.5, mode, cond.half(), uncond.half())
    assert out.dtype == torch.float16
    reference = semantic.guided_x0(denoised, grad.half().float(), 0.5, 1.5, mode, cond.half().float(),
                                   uncond.half().float())
    assert_close_across_paths(out.float(), reference, rtol=1e-2, why=FORMULA)


@pytest.mark.parametrize("mode", semantic.STEP_MODES)
def test_the_step_runs_on_the_tensors_device(mode):
    # meta (shapes only) stands in for an accelerator: any constant made on the CPU would not combine with it
    meta = torch.empty(2, 4, 8, 8, device="meta")
    out = semantic.guided_x0(meta, meta, 0.5, 2.0, mode, meta, meta, noisy=meta)
    assert out.device.type == "meta" and out.shape == (2, 4, 8, 8)


# --- gating and the loss terms ---------------------------------------------------------------------

def test_step_index_window_edges_and_errors():
    assert semantic.step_indices(10, 0.5, 0.5) == set()  # start == end is a valid (empty) window
    assert semantic.step_indices(8, 0.25, 0.5, every=3) == {2}
    with pytest.raises(ValueError, match="^every must be at least 1, got 0$"):
        semantic.step_indices(10, 0.0, 1.0, every=0)
    with pytest.raises(ValueError, match=r"end_percent \(1.5\) must satisfy 0 <= start <= end <= 1"):
        semantic.step_indices(10, 0.0, 1.5)
    with pytest.raises(ValueError, match=r"^start_percent \(-0.1\)"):
        semantic.step_indices(10, -0.1, 0.5)


def test_a_midpoint_evaluation_between_levels_is_not_a_step():
    sigmas = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.0])
    assert semantic.sigma_step_index(2.5, sigmas) is None  # Heun's second evaluation, 0.5 from a level
    assert semantic.sigma_step_index(3.0 * (1 + 1e-6), sigmas) == 2  # the same level up to rounding


def test_content_loss_adds_with_its_weight():
    emb = torch.randn(6, 8, generator=torch.Generator().manual_seed(8))
    content = torch.randn(1, 8, generator=torch.Generator().manual_seed(9))
    cosine = (emb @ content.t()).squeeze(1) / (emb.norm(dim=1) * content.norm())
    per_view = torch.arccos(cosine.double()) ** 2 / 2
    expected = 3.0 * per_view.view(3, 2).mean(0)  # view-major: views of image 0 are rows 0, 2, 4
    out = semantic.text_image_loss(emb, None, content, 2, 2.0, 3.0)
    assert_close_across_paths(out.double(), expected, rtol=1e-4, why=FORMULA)


def test_text_image_loss_runs_on_the_embeddings_device():
    meta = torch.empty(6, 8, device="meta")
    out = semantic.text_image_loss(meta, torch.empty(1, 8, device="meta"), torch.empty(1, 8, device="meta"),
                                   2, 1.0, 1.0)
    assert out.device.type == "meta" and out.shape == (2,)


def test_masked_image_has_the_same_values_and_a_gradient_scaled_by_the_mask():
    image = torch.rand(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[0.0, 0.3, 1.0], [1.0, 0.5, 0.0]], dtype=torch.float64).view(1, 1, 2, 3)
    out = semantic.masked_for_loss(image, mask)
    assert_close_across_paths(out, image.detach(), rtol=1e-12, why=FORMULA)  # m x + (1 - m) x = x
    out.sum().backward()
    torch.testing.assert_close(image.grad, mask.expand(1, 3, 2, 3), rtol=0, atol=0)  # exact: d/dx of m x is m


def test_masked_image_keeps_the_images_dtype_and_device():
    half = semantic.masked_for_loss(torch.rand(1, 3, 4, 4).half(), torch.ones(1, 1, 4, 4))
    assert half.dtype == torch.float16
    meta = semantic.masked_for_loss(torch.empty(1, 3, 4, 4, device="meta"), torch.ones(1, 1, 4, 4))
    assert meta.device.type == "meta"


# --- views ------------------------------------------------------------------------------------------

def test_a_whole_image_view_is_an_antialiased_bilinear_resize():
    image = torch.rand(2, 3, 24, 36, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    out = semantic.make_views(image, 8, 0, torch.Generator().manual_seed(0))
    expected = torch.einsum("ij,bcjk,lk->bcil", resize_matrix(24, 8, True), image, resize_matrix(36, 8, True))
    assert_close_across_paths(out, expected, rtol=1e-9, why=FORMULA)


def test_full_size_cutouts_are_area_averaged_and_small_ones_bilinear_upsampled():
    image = torch.rand(1, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    # min_fraction 1: every cutout is the whole (square) image
    shrunk = semantic.make_views(image, 4, 3, torch.Generator().manual_seed(0), min_fraction=1.0)
    assert_close_across_paths(shrunk, block_mean(image, 3).repeat(3, 1, 1, 1), rtol=1e-9, why=FORMULA)
    one = semantic.make_views(image, 4, 1, torch.Generator().manual_seed(0), min_fraction=1.0)
    assert_close_across_paths(one, block_mean(image, 3), rtol=1e-9, why=FORMULA)  # one cutout, not the resize
    grown = semantic.make_views(image, 12, 2, torch.Generator().manual_seed(0), min_fraction=1.0)
    assert_close_across_paths(grown, image.repeat(2, 1, 1, 1), rtol=1e-9, why=FORMULA)  # side == size
    small = image[..., :6, :6]
    up = semantic.make_views(small, 9, 1, torch.Generator().manual_seed(0), min_fraction=1.0)
    expected = torch.einsum("ij,bcjk,lk->bcil", resize_matrix(6, 9, False), small, resize_matrix(6, 9, False))
    assert_close_across_paths(up, expected, rtol=1e-9, why=FORMULA)


@pytest.mark.parametrize("transpose", [False, True])
def test_cutouts_are_uniformly_placed_inside_the_image(transpose):
    """A 12 x 16 image of column indices: each full-height cutout (side 12, pooled 3x to 4) starts at a
    column 0..4, readable from its first pixel (mean of columns left..left+2 = left + 1)."""
    columns = torch.arange(16, dtype=torch.float64).expand(1, 3, 12, 16).clone()
    image = columns.transpose(-1, -2) if transpose else columns
    views = semantic.make_views(image, 4, 30, torch.Generator().manual_seed(0), min_fraction=1.0)
    if transpose:
        views = views.transpose(-1, -2)
    starts = views[:, 0, 0, 0] - 1
    assert_close_across_paths(starts, starts.round(), rtol=1e-5, why=FORMULA)
    assert set(starts.round().long().tolist()) == set(range(5))  # every start 0..16-12, none outside
    expected = torch.cat([block_mean(columns[..., start:start + 12], 3) for start in starts.round().long().tolist()])
    assert_close_across_paths(views, expected, rtol=1e-9, why=FORMULA)


def test_views_come_from_the_generator_alone():
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(12))
    first = semantic.make_views(image, 8, 6, torch.Generator().manual_seed(5))
    torch.manual_seed(123)  # the global generator must not matter
    second = semantic.make_views(image, 8, 6, torch.Generator().manual_seed(5))
    assert_close_across_paths(first, second, rtol=1e-5, why=FORMULA)
    sizes = semantic.cutout_sizes(50, 32, 40, 0.5, 1.0, torch.Generator().manual_seed(5))
    assert min(sizes) >= 16 and max(sizes) <= 32  # [min_fraction * 32, 32], integers


def test_cutout_sides_span_min_fraction_to_the_full_side():
    sizes = semantic.cutout_sizes(200, 32, 40, 0.5, 1.0, torch.Generator().manual_seed(5))
    assert min(sizes) == 16 and max(sizes) == 31  # int(u * 16 + 16) for u in [0, 1): integers
    squared = semantic.cutout_sizes(200, 32, 40, 0.5, 2.0, torch.Generator().manual_seed(5))
    assert min(squared) == 16 and max(squared) <= 31
    assert sorted(squared)[100] < sorted(sizes)[100]  # u^2 favours small cutouts
    tiny = semantic.cutout_sizes(200, 3, 3, 0.0, 1.0, torch.Generator().manual_seed(5))
    assert set(tiny) == {1, 2}  # min_fraction 0: down to a single pixel


def test_make_views_defaults_are_half_size_cutouts_with_a_linear_size_law():
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(13))
    default = semantic.make_views(image, 8, 6, torch.Generator().manual_seed(2))
    explicit = semantic.make_views(image, 8, 6, torch.Generator().manual_seed(2), min_fraction=0.5, cut_power=1.0)
    assert_close_across_paths(default, explicit, rtol=1e-5, why=FORMULA)
    other = semantic.make_views(image, 8, 6, torch.Generator().manual_seed(2), min_fraction=1.0, cut_power=2.0)
    assert (default - other).abs().max() > 1e-3  # the defaults matter: this seed draws smaller cutouts


def test_gram_rejects_other_shapes_by_name():
    with pytest.raises(ValueError, match=r"^features must be \[B, C, H, W\] or \[B, N, C\], got shape \(2, 3\)$"):
        semantic.gram(torch.zeros(2, 3))


def test_style_loss_is_the_mean_squared_gram_error_with_per_sample_targets():
    gen = torch.Generator().manual_seed(14)
    features = [torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 5, 7, generator=gen)]  # conv, tokens
    targets = [torch.randn(2, 3, 3, generator=gen), torch.randn(1, 7, 7, generator=gen)]
    flats = [features[0].double().flatten(2), features[1].double().transpose(1, 2)]
    grams = [f @ f.transpose(1, 2) / (f.shape[1] * f.shape[2]) for f in flats]
    errors = [((g - t.double()) ** 2).mean(dim=(1, 2)) for g, t in zip(grams, targets)]
    assert_close_across_paths(semantic.style_loss(features, targets).double(), (errors[0] + errors[1]) / 2,
                              rtol=1e-5, why=FORMULA)
    scales = [(t.double() ** 2).mean(dim=(1, 2)) for t in targets]  # per target: [2] and [1]
    relative = (errors[0] / scales[0] + errors[1] / scales[1]) / 2
    assert_close_across_paths(semantic.style_loss(features, targets, relative=True).double(), relative,
                              rtol=1e-5, why=FORMULA)


def test_style_targets_are_moved_to_the_features_device():
    # meta (shapes only) stands in for an accelerator; the target Grams were computed on the CPU
    out = semantic.style_loss([torch.empty(2, 3, 4, 4, device="meta")], [torch.zeros(1, 3, 3)])
    assert out.device.type == "meta" and out.shape == (2,)


def test_repeat_views_lays_per_image_targets_out_view_major():
    target = torch.arange(8.0).view(2, 4)
    # a gather, no arithmetic: exact
    torch.testing.assert_close(semantic.repeat_views(target, 3, 2), torch.cat([target] * 3), rtol=0, atol=0)  # exact: copies
    shared = torch.ones(1, 4)
    assert semantic.repeat_views(shared, 3, 2) is shared  # a shared target broadcasts as it is
    with pytest.raises(ValueError, match="^a target batch of 3 does not match the image batch 2$"):
        semantic.repeat_views(torch.zeros(3, 5), 2, 2)


def test_style_layers_of_a_single_block_tower_and_the_error():
    assert semantic.style_layer_indices(1) == [0]
    assert semantic.style_layer_indices(24) == [4, 8, 12]
    with pytest.raises(ValueError, match="^depth must be at least 1, got 0$"):
        semantic.style_layer_indices(0)
