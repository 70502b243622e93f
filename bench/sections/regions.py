"""Stroke Regions to Words: the patched model against the unpatched one, same KSampler settings."""
from __future__ import annotations

from bench.common import device_and_sync, device_name, harness, interleaved

TITLE = "Stroke Regions to Words: patched vs unpatched model (KSampler, same steps, 5 regions)"

PROMPT = ("a photograph of snowy mountains above a calm lake at sunset, a setting sun in the evening sky, "
          "a green meadow in front")
SPEC = "#6eaaeb: evening sky\n#fad250: setting sun\n#5f5a78: snowy mountains\n#2864aa: calm lake\n#46963c: green meadow"


def bench_case(host, label: str, full_size: bool, pixels: int, steps: int, rounds: int, mode: str) -> dict:
    import numpy as np
    import torch
    from scripts.workflow_builder import stroke_painting

    tiny = harness.test_nodes_module().tiny
    regions_node = host.nodes.NODE_CLASS_MAPPINGS["GS_StrokeRegions"]
    ksampler = host.nodes.KSampler()
    device, sync = device_and_sync()
    with torch.inference_mode():
        model = tiny.tiny_model("sd15", 0, full_size=full_size)
        clip = tiny.tiny_clip(0)
        stroke = torch.from_numpy(np.asarray(stroke_painting(pixels)).copy()).float().div(255).unsqueeze(0)
        out = regions_node.execute(model, clip, stroke, PROMPT, SPEC, 0.4, mode, 0.0, 1.0, "append")
        patched, positive = out.args[0], out.args[1]
        negative = tiny.random_conditioning("sd15", 2)
        latent = {"samples": torch.zeros(1, 4, pixels // 8, pixels // 8)}

        def ours():
            ksampler.sample(patched, 1, steps, 7.5, "euler", "normal", positive, negative, latent)

        def theirs():
            ksampler.sample(model, 1, steps, 7.5, "euler", "normal", positive, negative, latent)

        times = interleaved({"patched": ours, "plain": theirs}, sync, rounds)
    return {"label": label, "device": device_name(device), **times, "ratio": times["patched"] / times["plain"]}


def run(host) -> None:
    import torch

    rows = [bench_case(host, f"tiny SD1.x UNet, 256x256, 10 steps, {mode}", False, 256, 10, 4, mode)
            for mode in ("paint_with_words", "dense")]
    if torch.cuda.is_available():
        for mode in ("paint_with_words", "dense"):
            rows.append(bench_case(host, f"full-size SD1.5 UNet (random weights), 512x512, 30 steps, {mode}", True,
                                   512, 30, 5, mode))
    print(f"{'case':72} {'device':28} {'patched s':>9} {'plain s':>8} {'ratio':>6}")
    for row in rows:
        print(f"{row['label']:72} {row['device']:28} {row['patched']:9.3f} {row['plain']:8.3f} {row['ratio']:6.3f}")
    worst = max(row["ratio"] for row in rows)
    print(f"overhead target <= 1.10: {'met' if worst <= 1.10 else 'NOT met'} (worst {worst:.3f})")
