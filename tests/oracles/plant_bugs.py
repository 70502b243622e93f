"""Mutation check for the oracle suite: plant one bug at a time in the product code, run the oracle tests that
target it, then revert the file with ``git checkout``. Not collected by pytest.

    COMFYUI_PATH=<host> .venv/bin/python tests/oracles/plant_bugs.py            # every plant
    COMFYUI_PATH=<host> .venv/bin/python tests/oracles/plant_bugs.py "SDEdit mask dropped"

It refuses to start unless guidance/, nodes/ and web/ have no uncommitted changes (the revert is a checkout), and
prints one JSON line per plant: killed (some targeted test failed), seconds, the first failing test.
"""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
O = "tests/oracles/"
SD, GR, RG, CL = O + "test_sdedit_oracle.py", O + "test_gradop_oracle.py", O + "test_regions_oracle.py", O + "test_claims.py"

STALE_ADAM = [
    ("guidance/gradop.py", "PALETTE_TEMPERATURE = 0.01", "PALETTE_TEMPERATURE = 0.01\n_STALE = {}"),
    ("guidance/gradop.py", "        optimiser = torch.optim.Adam([z], lr=lr)\n",
     "        optimiser = torch.optim.Adam([z], lr=lr)\n        _prev = _STALE.get(tuple(z.shape))\n"
     "        if _prev is not None:\n            optimiser.state[z] = {k: v.clone() for k, v in _prev.items()}\n"),
    ("guidance/gradop.py", "        with torch.no_grad():\n            result.image = decode(z).detach()",
     "        _STALE[tuple(z.shape)] = optimiser.state[z]\n        with torch.no_grad():\n"
     "            result.image = decode(z).detach()"),
]

PLANTS = {
    "diffusers start round()": ([("guidance/sdedit.py", "return steps - min(int(steps * strength), steps)",
                                  "return steps - min(round(steps * strength), steps)")], [SD]),
    "GradOP+ same re-noise seed every iteration": ([("nodes/gradop.py", "host.derived_seed(seed, 1 + iteration)",
                                                     "host.derived_seed(seed, 1)")], [GR]),
    "decoder bf16 runs in float32": ([("nodes/gradop.py", '"bf16": torch.bfloat16,', '"bf16": torch.float32,')],
                                     [GR + "::test_decoder_choice_computes_in_the_precision_it_names"]),
    "GradOP+ start index round()": ([("guidance/gradop.py", "start = int(num_steps * (1.0 - strength))",
                                      "start = round(num_steps * (1.0 - strength))")], [GR, CL]),
    "Adam betas (0.8, 0.999)": ([("guidance/gradop.py", "torch.optim.Adam([z], lr=lr)",
                                  "torch.optim.Adam([z], lr=lr, betas=(0.8, 0.999))")], [GR]),
    "Adam state kept across iterations": (STALE_ADAM, [GR]),
    "blur sigma 7 -> 6": ([("guidance/gradop.py", "REFERENCE_BLUR_SIGMA = 7.0", "REFERENCE_BLUR_SIGMA = 6.0")], [GR, CL]),
    "blur kernel 5 sigma -> 4 sigma": ([("guidance/gradop.py", "_odd_at_most(5.0 * sigma)", "_odd_at_most(4.0 * sigma)")],
                                       [GR, CL]),
    "median kernel 15 -> 13": ([("guidance/gradop.py", "REFERENCE_MEDIAN_KERNEL = 15", "REFERENCE_MEDIAN_KERNEL = 13")],
                               [GR, CL]),
    "palette temperature 0.01 -> 0.02": ([("guidance/gradop.py", "PALETTE_TEMPERATURE = 0.01",
                                           "PALETTE_TEMPERATURE = 0.02")], [GR, CL]),
    "masked mean without the channels": ([("guidance/gradop.py", "(mask.expand_as(error)).flatten(1).sum(dim=1)",
                                           "mask.flatten(1).sum(dim=1)")], [GR]),
    "loss averaged over the batch, not summed": ([("guidance/gradop.py",
                                                   "paint = painting_loss(painting(decode(z)), target, mask).sum()",
                                                   "paint = painting_loss(painting(decode(z)), target, mask).mean()")],
                                                 [GR]),
    "VP mapping x / (1 + s)": ([("guidance/gradop.py", "return vp_from_ve(x, sigma)",
                                 "return x / (1.0 + float(sigma))")], [GR]),
    "re-noise keeps z* at sampler scale": ([("guidance/gradop.py", "return z + sigma * noise",
                                             "return z * (1.0 + sigma ** 2) ** 0.5 + sigma * noise")], [GR]),
    "paper semantics: t not rescaled": ([("guidance/sdedit.py", "scale = t0 / times[0]", "scale = t0")], [SD]),
    "comfy semantics round(steps / strength)": ([("guidance/sdedit.py", "schedule(int(steps / strength))",
                                                  "schedule(round(steps / strength))")], [SD]),
    "SDEdit repeats reuse the seed": ([("nodes/sdedit.py", "host.derived_seed(seed, repeat)",
                                        "host.derived_seed(seed, 0)")], [SD]),
    "SDEdit mask dropped": ([("nodes/sdedit.py", "current, noise_mask=noise_mask,", "current, noise_mask=None,")],
                            [SD]),
    "regions: max over the whole batch": ([("guidance/regions.py",
                                            "scores.amax(dim=(-3, -2, -1), keepdim=True).clamp_min(0)",
                                            "scores.amax().clamp_min(0)")], [RG]),
    "regions: no log(1 + sigma)": ([("guidance/regions.py", "torch.log1p(sigma.float().clamp_min(0))",
                                     "sigma.float().clamp_min(0)")], [RG]),
    "regions: edge bands kept as regions": ([("guidance/regions.py",
                                              "keep = (area >= min_pixels) & (interior >= min_pixels * 0.25)",
                                              "keep = (area >= min_pixels)")], [RG]),
    "regions: specks with an interior kept": ([("guidance/regions.py",
                                                "keep = (area >= min_pixels) & (interior >= min_pixels * 0.25)",
                                                "keep = (interior >= min_pixels * 0.25)")], [RG]),
    "regions: nearest mask resize": ([("guidance/regions.py", 'mode="area").squeeze(1)', 'mode="nearest").squeeze(1)')],
                                     [RG]),
    "GradOP (reconstruction) re-noise seed + 0": ([("nodes/gradop.py", "host.derived_seed(seed, 1)), sigma, flow)",
                                                    "host.derived_seed(seed, 0)), sigma, flow)")], [GR]),
    "RGBA keeps the wrong channels": ([("nodes/host.py", "return image[..., :3]", "return image[..., 1:]")], [CL]),
    "greyscale not repeated": ([("nodes/host.py", "return image.expand(-1, -1, -1, 3)",
                                 "return torch.cat([image, torch.zeros_like(image), torch.zeros_like(image)], -1)")],
                               [CL]),
    "half loss max-pooled": ([("nodes/gradop.py", "avg_pool2d(v, 2)", "max_pool2d(v, 2)")], [GR]),
    "TAESD fed unscaled latents": ([("nodes/gradients.py", "return self._decode(x0, clamp)",
                                     "return self._decode(x0 / 0.18215, clamp)")], [GR]),
    "ancestral: same seed every segment": ([("nodes/gradop.py",
                                             'host.derived_seed(extra_args.get("seed", 0) or 0, segment)',
                                             'extra_args.get("seed", 0) or 0')], [CL]),
    "progress counts sampler steps only": ([("nodes/gradop.py", "sampler_steps + config.total_grad_steps()",
                                             "sampler_steps")], [CL]),
    "decoder fit 7200 -> 7000 bytes per pixel": ([("nodes/gradop.py", "KL_DECODER_CHECKPOINTED_BYTES_PER_PIXEL = 7_200",
                                                   "KL_DECODER_CHECKPOINTED_BYTES_PER_PIXEL = 7_000")], [CL]),
    "regions default strength 0.5": ([("nodes/regions.py", 'io.Float.Input("strength", default=0.4, min=0.0',
                                       'io.Float.Input("strength", default=0.5, min=0.0')], [CL]),
}


def git_clean():
    out = subprocess.run(["git", "status", "--porcelain", "guidance", "nodes", "web"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    return out == ""


def revert(files):
    subprocess.run(["git", "checkout", "--", *sorted(set(files))], cwd=ROOT, check=True)


def main(names):
    assert git_clean(), "product code must be clean before planting"
    results = {}
    for name in names:
        edits, tests = PLANTS[name]
        files = [f for f, _, _ in edits]
        try:
            for path, old, new in edits:
                full = os.path.join(ROOT, path)
                text = open(full).read()
                assert text.count(old) == 1, (name, path, old, text.count(old))
                open(full, "w").write(text.replace(old, new))
            start = time.time()
            run = subprocess.run([".venv/bin/python", "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                                 cwd=ROOT, capture_output=True, text=True,
                                 env=dict(os.environ), timeout=900)
            tail = [line for line in run.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))
                    or " passed" in line or " failed" in line]
            results[name] = {"killed": run.returncode != 0, "seconds": round(time.time() - start, 1), "tail": tail[-3:]}
        finally:
            revert(files)
            assert git_clean()
        print(json.dumps({name: results[name]}), flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:] or list(PLANTS))
