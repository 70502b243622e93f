"""Fixtures for the oracle tests: the same tiny seeded models the executor builds, as plain torch objects."""
from types import SimpleNamespace

import pytest
import torch

from devkit import harness

from . import reference


@pytest.fixture(scope="session")
def tiny(host):
    """The tiny SD1 UNet, TAESD-shaped VAE and random conditionings, rebuilt in this process from the same seeds as
    the GS_TestTinyCheckpoint / GS_TestConditioning nodes (the executor's copies are never touched)."""
    nodes = harness.test_nodes_module().tiny
    model = nodes.tiny_model("sd15", 0)
    vae = nodes.tiny_vae(0)
    decoder = vae.first_stage_model
    decoder.requires_grad_(False)
    decoder.eval()
    unet = model.model.diffusion_model
    unet.requires_grad_(False)
    schedule = reference.NoiseSchedule()
    return SimpleNamespace(
        model=model, unet=unet, vae=vae, decoder=decoder, schedule=schedule,
        cond=nodes.random_conditioning("sd15", 1)[0][0], uncond=nodes.random_conditioning("sd15", 2)[0][0],
        clip_factory=lambda: nodes.tiny_clip(0))


@pytest.fixture(scope="session")
def denoiser(tiny):
    def make(cfg):
        return reference.CFGDenoiser(tiny.unet, tiny.schedule, tiny.cond, tiny.uncond, cfg)
    return make


@pytest.fixture
def store(host):
    captured = harness.test_nodes_module().CAPTURED
    captured.clear()
    return captured


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """The suite shares 2 CPU cores with other jobs; torch's OpenMP pool of 2 spins against them (a tiny-UNet step
    took 1 s instead of 15 ms under load). One thread for the oracle tests (executor and oracle alike), restored
    afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
