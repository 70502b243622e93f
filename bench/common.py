"""Helpers shared by the `make bench` sections."""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))
import harness  # noqa: E402,F401


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def interleaved(fns: dict, sync, rounds: int) -> dict:
    """Median wall time of each callable, run in interleaved rounds so drift hits all alike."""
    for fn in fns.values():
        fn()  # warm-up (model load, kernels)
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, sync))
    return {name: statistics.median(values) for name, values in times.items()}


def device_and_sync():
    import torch

    import comfy.model_management
    device = comfy.model_management.get_torch_device()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return device, sync


def device_name(device) -> str:
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"
