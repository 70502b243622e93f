"""Unit tests of guidance/semantic.py (pure torch, no host)."""
import math

import pytest
import torch

from guidance import semantic


def test_spherical_distance_is_half_the_squared_angle():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    v = torch.tensor([[0.0, 3.0], [1.0, 1.0], [5.0, 0.0]])
    expected = torch.tensor([(math.pi / 2) ** 2 / 2, (math.pi / 4) ** 2 / 2, 0.0])
    torch.testing.assert_close(semantic.spherical_distance(u, v), expected, atol=1e-6, rtol=1e-5)


def test_gram_is_per_sample_and_a_batch_of_two_equals_two_batches_of_one():
    features = torch.randn(2, 5, 4, 3)
    both = semantic.gram(features)
    for b in range(2):
        flat = features[b].reshape(5, -1)
        torch.testing.assert_close(both[b], flat @ flat.t() / (5 * 12), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(semantic.gram(features[b:b + 1])[0], both[b], atol=1e-6, rtol=1e-6)
    tokens = torch.randn(2, 7, 5)  # ViT tokens [B, N, C]
    torch.testing.assert_close(semantic.gram(tokens), semantic.gram(tokens.transpose(1, 2).unsqueeze(-1)))


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
    torch.testing.assert_close(semantic.rms(step), 0.5 * semantic.rms(cond - uncond), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(semantic.guided_x0(denoised, grad, 0.0, 3.0, "normalised", cond, uncond), denoised)
    torch.testing.assert_close(semantic.guided_x0(denoised, grad, 2.0, 3.0, "paper"), denoised - 2.0 * 9.0 * grad)
    # cfg 1: no CFG correction, the predicted noise's size stands in
    noisy = denoised + 3.0 * torch.randn_like(denoised)
    out = semantic.guided_x0(denoised, grad, 0.5, 3.0, "normalised", cond, cond, noisy=noisy)
    torch.testing.assert_close(semantic.rms(denoised - out), 0.5 * semantic.rms(noisy - denoised), atol=1e-6, rtol=1e-5)
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
    torch.testing.assert_close(both, only_text + only_content)
    expected = 2.0 * semantic.spherical_distance(emb, text.expand(6, 8)).view(3, 2).mean(0)
    torch.testing.assert_close(only_text, expected)


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
    torch.testing.assert_close(relative, plain / targets[0].pow(2).mean())
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
