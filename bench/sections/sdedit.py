"""SDEdit node against KSampler at the same steps (both run `steps` UNet evaluations)."""
from __future__ import annotations

from bench.common import device_and_sync, device_name, harness, interleaved

TITLE = "SDEdit node vs KSampler (same steps; strength 0.8 / denoise 0.8)"


def bench_case(host, label: str, full_size: bool, pixels: int, steps: int, rounds: int) -> dict:
    import torch
    tiny = harness.test_nodes_module().tiny

    sdedit_node = host.nodes.NODE_CLASS_MAPPINGS["GS_SDEdit"]
    ksampler = host.nodes.KSampler()
    device, sync = device_and_sync()
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

        times = interleaved({"sdedit": ours, "ksampler": theirs}, sync, rounds)
    return {"label": label, "device": device_name(device), **times, "ratio": times["sdedit"] / times["ksampler"]}


def run(host) -> None:
    import torch

    rows = [bench_case(host, "tiny SD1.x UNet, 256x256, 20 steps", False, 256, 20, 7)]
    if torch.cuda.is_available():
        rows.append(bench_case(host, "full-size SD1.5 UNet (random weights), 512x512, 30 steps", True, 512, 30, 5))
    print(f"{'case':58} {'device':28} {'SDEdit s':>9} {'KSampler s':>10} {'ratio':>6}")
    for row in rows:
        print(f"{row['label']:58} {row['device']:28} {row['sdedit']:9.3f} {row['ksampler']:10.3f} "
              f"{row['ratio']:6.3f}")
    worst = max(row["ratio"] for row in rows)
    print(f"overhead target <= 1.05: {'met' if worst <= 1.05 else 'NOT met'} (worst {worst:.3f})")
