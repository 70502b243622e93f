import shutil
from pathlib import Path

import pytest

from devkit import harness  # the repository root is on sys.path: pythonpath in pyproject.toml

harness.put_host_first()


def _perturb_rounding() -> None:
    """GS_PERTURB (comma-separated; ``make test-perturbed``) switches kernels so results round differently, the
    way another CPU would: ``threadsN`` (torch threads), ``nomkldnn`` (oneDNN off: native convolutions and
    matmuls), ``flushdenormal`` (denormals flushed to zero)."""
    import os

    import torch
    for item in filter(None, os.environ.get("GS_PERTURB", "").split(",")):
        if item.startswith("threads") and item[7:].isdigit():
            torch.set_num_threads(int(item[7:]))
        elif item == "nomkldnn":
            torch.backends.mkldnn.enabled = False
        elif item == "flushdenormal":
            torch.set_flush_denormal(True)
        else:
            raise pytest.UsageError(f"GS_PERTURB: unknown perturbation {item!r} (threadsN, nomkldnn, flushdenormal)")


_perturb_rounding()


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    """A real ComfyUI host with the pack and the tiny test nodes loaded (once per session)."""
    workdir = tmp_path_factory.mktemp("host")
    instance = harness.Host(workdir)
    yield instance
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def captured():
    store = harness.test_nodes_module().CAPTURED
    store.clear()
    return store


@pytest.fixture()
def vae_approx(host, tmp_path):
    """A models/vae_approx folder holding tiny TAESD decoder files (written by the test): taesd_decoder (SD1.x,
    4 latent channels) and the 16-channel taef1_decoder and taesd3_decoder of the flow families."""
    import folder_paths
    from safetensors.torch import save_file
    folder = tmp_path / "vae_approx"
    folder.mkdir()
    tiny = harness.test_nodes_module().tiny
    save_file(tiny.taesd_decoder_state_dict(3), str(folder / "taesd_decoder.safetensors"))
    for name in ("taef1_decoder", "taesd3_decoder"):
        save_file(tiny.taesd_decoder_state_dict(3, latent_channels=16), str(folder / f"{name}.safetensors"))
    folder_paths.add_model_folder_path("vae_approx", str(folder), is_default=True)
    folder_paths.filename_list_cache.pop("vae_approx", None)
    yield folder
    folder_paths.folder_names_and_paths["vae_approx"][0].remove(str(folder))
    folder_paths.filename_list_cache.pop("vae_approx", None)


@pytest.fixture()
def flow_vae_approx(host, tmp_path):
    """models/vae_approx with tiny 16-channel TAESD decoders under the names the SD3 and Flux latent formats ask
    for (taesd3_decoder, taef1_decoder), written by the test."""
    import folder_paths
    from safetensors.torch import save_file
    folder = tmp_path / "flow_vae_approx"
    folder.mkdir()
    state = harness.test_nodes_module().tiny.taesd_decoder_state_dict(3, latent_channels=16)
    for name in ("taesd3_decoder", "taef1_decoder"):
        save_file(state, str(folder / f"{name}.safetensors"))
    folder_paths.add_model_folder_path("vae_approx", str(folder), is_default=True)
    folder_paths.filename_list_cache.pop("vae_approx", None)
    yield folder
    folder_paths.folder_names_and_paths["vae_approx"][0].remove(str(folder))
    folder_paths.filename_list_cache.pop("vae_approx", None)


def pytest_collection_modifyitems(session, config, items):
    """Browser tests run last: Playwright's sync API leaves an asyncio loop marked as running in this
    thread, after which the in-process host's ``asyncio.run`` calls would fail."""
    browser = Path(__file__).resolve().parent / "browser"
    items.sort(key=lambda item: Path(str(item.fspath)).resolve().is_relative_to(browser))


@pytest.fixture()
def clip_guidance(host, tmp_path):
    """A models/clip_guidance folder with tiny open_clip checkpoints (written by the test; the tiny architectures
    are registered as open_clip configs): gs_tiny_vit.safetensors, gs_tiny_rn.safetensors, and
    needs_pickle.pt (tensors next to a Python object, so a weights-only load refuses it)."""
    import folder_paths
    import torch
    from safetensors.torch import save_file
    probes = harness.test_nodes_module().semantic_probes
    probes.register_configs()
    folder = tmp_path / "clip_guidance"
    folder.mkdir()
    save_file(probes.tiny_state_dict("vit", 0), str(folder / "gs_tiny_vit.safetensors"))
    save_file(probes.tiny_state_dict("rn", 0), str(folder / "gs_tiny_rn.safetensors"))
    torch.save({"state_dict": probes.tiny_state_dict("vit", 0), "extra": harness.PickleOnly()},
               str(folder / "needs_pickle.pt"))
    folder_paths.add_model_folder_path("clip_guidance", str(folder), is_default=True)
    folder_paths.filename_list_cache.pop("clip_guidance", None)
    yield folder
    folder_paths.folder_names_and_paths["clip_guidance"][0].remove(str(folder))
    folder_paths.filename_list_cache.pop("clip_guidance", None)


@pytest.fixture(scope="session")
def lpips_models(host, tmp_path_factory):
    """A models/lpips folder holding seeded random VGG16 / AlexNet / SqueezeNet trunks (written by the test)."""
    import folder_paths
    folder = tmp_path_factory.mktemp("lpips")
    paths = harness.write_lpips_trunks(folder)
    folder_paths.add_model_folder_path("lpips", str(folder), is_default=True)
    folder_paths.filename_list_cache.pop("lpips", None)
    yield paths
    folder_paths.folder_names_and_paths["lpips"][0].remove(str(folder))
    folder_paths.filename_list_cache.pop("lpips", None)


@pytest.fixture(autouse=True)
def _recorded_numbers_belong_to(request):
    """GS_RECORD_NUMBERS: the tensors of each graph a test executes are filed under the test's id."""
    harness.RECORDING_TEST = request.node.nodeid
    yield


def pytest_sessionfinish(session, exitstatus):
    import os

    target = os.environ.get("GS_RECORD_NUMBERS")
    if target and harness.RECORDED:
        import torch
        torch.save(harness.RECORDED, target)
