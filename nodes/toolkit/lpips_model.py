"""LPIPS for the pack, offline: the wheel's linear calibration layers plus trunk weights read from disk.

``lpips.LPIPS`` would download the trunk (VGG16 / AlexNet / SqueezeNet) through torchvision on first use.
The pack never does: it builds the network with ``pnet_rand=True`` (no download; the calibration layers
still come from the wheel) and loads the trunk's state dict itself from ``models/lpips/`` or from the torch
hub cache (``$TORCH_HOME/hub/checkpoints``, the file torchvision would have downloaded). No file: a clear
error naming the file and the folder. The model is pack-owned, built outside inference mode, frozen, and built
once: later runs with the same net and file reuse it (:func:`load_lpips`).
"""
from __future__ import annotations

import copy
import os
import pickle

import torch

import comfy.model_management
import comfy.utils

from . import gradients, model_files

NETS = ("vgg", "alex", "squeeze")
# the file torchvision downloads for each trunk (torch hub cache name)
HUB_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth", "squeeze": "squeezenet1_1-b8a52dc0.pth"}
TRUNKS = {"vgg": "VGG16", "alex": "AlexNet", "squeeze": "SqueezeNet 1.1"}
FOLDER = "lpips"
MIN_SIDE = {"vgg": 16, "alex": 31, "squeeze": 17}  # the smallest image side (px) each trunk runs on (measured)


def check_side(net: str, window_px: int, downscale: int = 1) -> None:
    """A clear error when the images LPIPS would see (the window, downscaled) are too small for ``net``."""
    side = window_px // max(1, int(downscale))
    if side < MIN_SIDE[net]:
        raise ValueError(f"LPIPS would compare {side} px images ({window_px} px windows"
                         f"{f' at 1/{downscale}, lpips_size' if downscale > 1 else ''}), smaller than the "
                         f"{MIN_SIDE[net]} px lpips_net '{net}' needs: make window_size larger"
                         f"{', lpips_size larger' if downscale > 1 else ''} or use lpips_net 'vgg'")


def trunk_file(net: str) -> str:
    """Path of the trunk weights for ``net``: a file in models/lpips whose name contains the net's name
    ('vgg', 'alex', 'squeeze'), else torchvision's file in the torch hub cache; else a clear error."""
    if net not in NETS:
        raise ValueError(f"lpips_net must be one of {', '.join(NETS)}, got {net!r}")
    hub = os.path.join(torch.hub.get_dir(), "checkpoints", HUB_FILES[net])
    return model_files.find_file(
        FOLDER, "lpips_net", f"the {TRUNKS[net]} trunk weights", lambda name: net in os.path.basename(name).lower(),
        fallbacks=(hub,),
        missing=f"lpips_net '{net}' needs the {TRUNKS[net]} trunk weights, and the pack never downloads: put "
                f"torchvision's {HUB_FILES[net]} (or its 'features' state dict, .pth or .safetensors, with "
                f"'{net}' in the file name) into models/{FOLDER}/, or {HUB_FILES[net]} into "
                f"$TORCH_HOME/hub/checkpoints/")


def _shown(path: str) -> str:
    """A trunk file as the user knows it: models/lpips/<name> or the hub cache's file name (no server path)."""
    name = os.path.basename(path)
    if name in model_files.listed(FOLDER):
        return f"models/{FOLDER}/{name}"
    return f"$TORCH_HOME/hub/checkpoints/{name}"


def _read_trunk(path: str, net: str) -> dict:
    """The file's tensors; a junk, empty, truncated or pickle-needing file is refused by name."""
    shown = _shown(path)
    expected = f"use torchvision's {HUB_FILES[net]} or its 'features' state dict (.pth or .safetensors)"
    try:
        state = comfy.utils.load_torch_file(path, safe_load=True)
    except pickle.UnpicklingError as error:
        if "global" in str(error).lower():  # a class or function the weights-only unpickler refuses
            raise ValueError(f"lpips_net '{net}': {shown} needs full unpickling (it holds Python objects, not only "
                             f"tensors), which can run arbitrary code, so it is not loaded; {expected}") from None
        raise ValueError(f"lpips_net '{net}': {shown} is not a readable weights file (empty, truncated or not a "
                         f"checkpoint); {expected}") from None
    except Exception:
        raise ValueError(f"lpips_net '{net}': {shown} is not a readable weights file (empty, truncated or not a "
                         f"checkpoint); {expected}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"lpips_net '{net}': {shown} does not hold a state dict (names -> tensors); {expected}")
    return state


def _load_trunk(model, path: str, net: str) -> None:
    state = _read_trunk(path, net)
    slices = {}  # torchvision features index -> the LPIPS slice holding it
    for slice_name, block in model.net.named_children():
        for index, _ in block.named_children():
            slices[index] = slice_name
    mapped = {}
    for key, value in state.items():
        key = key[len("features."):] if key.startswith("features.") else key
        index, _, rest = key.partition(".")
        if index in slices:
            mapped[f"{slices[index]}.{index}.{rest}"] = value
    name = os.path.basename(path)
    expected = set(model.net.state_dict())
    if set(mapped) != expected:
        raise ValueError(f"lpips_net '{net}': {name} is not a {TRUNKS[net]} state dict (missing "
                         f"{len(expected - set(mapped))} of {len(expected)} trunk tensors); use torchvision's "
                         f"{HUB_FILES[net]}")
    try:
        model.net.load_state_dict(mapped)
    except RuntimeError as error:
        raise ValueError(f"lpips_net '{net}': {name} does not fit the {TRUNKS[net]} trunk "
                         f"({str(error).splitlines()[0][:200]})") from None


# The last network built, on the CPU, frozen and never changed: (net, file, its size and time, dtype) -> model.
# Building LPIPS constructs a whole torchvision network (VGG16: 138 M parameters initialised, seconds), so a
# sync run reuses it; one entry at most, replaced when another net or file is asked for (release_lpips frees it).
_BUILT: dict = {}


def release_lpips() -> None:
    """Forget the cached LPIPS network (its memory is freed once no run holds it)."""
    _BUILT.clear()


def _build(net: str, path: str):
    import lpips

    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    _load_trunk(model, path, net)
    return gradients.freeze(model, dtype=torch.float32)


def load_lpips(net: str = "vgg", device=None):
    """A frozen, pack-owned ``lpips.LPIPS(net)`` with trunk weights from disk (:func:`trunk_file`), on ``device``.

    Built once per (net, file, dtype) and kept on the CPU; a run on the CPU shares it (nothing changes it), a run
    on another device gets its own copy there, released with the run."""
    path = trunk_file(net)
    device = torch.device(device or comfy.model_management.get_torch_device())
    stat = os.stat(path)
    key = (net, os.path.realpath(path), stat.st_size, stat.st_mtime_ns, torch.float32)
    with gradients.grad_enabled():
        model = _BUILT.get(key)
        if model is None:
            _BUILT.clear()  # a single entry: the previous network goes before the next is built
            model = _build(net, path)
            _BUILT[key] = model
        if device.type != "cpu":
            model = copy.deepcopy(model).to(device=device)
    return model


class LPIPSDistance(gradients.OwnedModule):
    """``distance(images, anchor_images)``: per-item LPIPS between ``images`` [k*B,3,h,w] in [0, 1] and the
    anchor's B images (repeated per window), as ``lpips.LPIPS.forward`` computes it on ``2*img - 1``. The
    anchor's features are computed once per anchor tensor (once per step), not once per window batch.
    ``downscale`` > 1 compares the images area-averaged down by that factor (an approximation)."""

    def __init__(self, model, downscale: int = 1):
        self.module = model  # frozen by load_lpips (gradients.freeze)
        self.downscale = int(downscale)
        self.device = next(model.parameters()).device
        self._anchor = None
        self._anchor_features = None

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        import lpips
        images = images.to(self.device, torch.float32)
        if self.downscale > 1:
            images = torch.nn.functional.avg_pool2d(images, self.downscale)
        x = self.model.scaling_layer(images * 2 - 1)
        return [lpips.normalize_tensor(f) for f in self.model.net(x)]

    def __call__(self, images: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        if self._anchor is not anchor:
            with torch.no_grad():
                self._anchor_features = [f.detach() for f in self.features(anchor)]
            self._anchor = anchor
        repeats = images.shape[0] // anchor.shape[0]
        total = 0
        for layer, (feature, target) in enumerate(zip(self.features(images), self._anchor_features)):
            diff = (feature - target.repeat(repeats, 1, 1, 1)) ** 2
            total = total + self.model.lins[layer](diff).mean(dim=(2, 3))
        return total.reshape(-1)

    @property
    def model(self):
        return self.module

    def close(self) -> None:
        self._anchor = self._anchor_features = None
        super().close()
