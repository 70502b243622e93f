"""`make bench`: side-by-side timings measured in one run (never part of `make test`).

SDEdit section: the SDEdit node against KSampler at the same steps (both run `steps` UNet
evaluations), on the tiny model on CPU; on a full-size SD1.5-architecture model with random
weights at 512x512 when a CUDA device is present.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import harness  # noqa: E402


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def bench_sdedit(host, label: str, full_size: bool, pixels: int, steps: int, rounds: int) -> dict:
    import torch

    import comfy.model_management
    tiny = harness.test_nodes_module().tiny

    sdedit_node = host.nodes.NODE_CLASS_MAPPINGS["GS_SDEdit"]
    ksampler = host.nodes.KSampler()
    device = comfy.model_management.get_torch_device()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        model = tiny.tiny_model("sd15", 0, full_size=full_size)
        cond = tiny.random_conditioning("sd15", 1)
        uncond = tiny.random_conditioning("sd15", 2)
        latent = {"samples": torch.randn(1, 4, pixels // 8, pixels // 8, generator=torch.Generator().manual_seed(0))}

        def ours():
            sdedit_node.execute(model, cond, uncond, 1, steps, 7.5, "euler", "normal", 0.8, "paper", 1, "",
                                latent=latent)

        def theirs():
            ksampler.sample(model, 1, steps, 7.5, "euler", "normal", cond, uncond, latent, denoise=0.8)

        ours(), theirs()  # warm-up (model load, kernels)
        a, b = [], []
        for _ in range(rounds):  # interleaved, so drift hits both
            a.append(timed(ours, sync))
            b.append(timed(theirs, sync))
    sdedit_s, ksampler_s = statistics.median(a), statistics.median(b)
    return {"label": label, "device": device_name(device), "sdedit_s": sdedit_s, "ksampler_s": ksampler_s,
            "ratio": sdedit_s / ksampler_s}


def device_name(device) -> str:
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def main() -> None:
    host = harness.Host(harness.temp_workdir())
    import torch

    rows = [bench_sdedit(host, "tiny SD1.x UNet, 256x256, 20 steps", False, 256, 20, 7)]
    if torch.cuda.is_available():
        rows.append(bench_sdedit(host, "full-size SD1.5 UNet (random weights), 512x512, 30 steps", True, 512, 30, 5))
    print("\n== SDEdit node vs KSampler (same steps; strength 0.8 / denoise 0.8) ==")
    print(f"{'case':58} {'device':28} {'SDEdit s':>9} {'KSampler s':>10} {'ratio':>6}")
    for row in rows:
        print(f"{row['label']:58} {row['device']:28} {row['sdedit_s']:9.3f} {row['ksampler_s']:10.3f} "
              f"{row['ratio']:6.3f}")
    worst = max(row["ratio"] for row in rows)
    print(f"overhead target <= 1.05: {'met' if worst <= 1.05 else 'NOT met'} (worst {worst:.3f})")


if __name__ == "__main__":
    main()
