"""Mutation check for the oracle suite: plant one bug at a time in the product code, run the oracle tests that
target it, then revert the file with ``git checkout``. Not collected by pytest.

    COMFYUI_PATH=<host> .venv/bin/python tests/oracles/plant_bugs.py            # every plant
    COMFYUI_PATH=<host> .venv/bin/python tests/oracles/plant_bugs.py "SDEdit mask dropped"
    .venv/bin/python tests/oracles/plant_bugs.py --check     # every plant still applies (text only; seconds)

Before running anything it checks that every chosen plant still applies (its target text occurs exactly once
and the planted file compiles) and stops naming each plant that does not. It refuses to start unless guidance/,
nodes/ and web/ have no uncommitted changes (the revert is a checkout), and prints one JSON line per plant: killed (some targeted test failed), seconds, the first failing test.
"""
import json
import os
import subprocess
import sys
import time

TIMEOUT = int(os.environ.get("PLANT_TIMEOUT", "900"))  # seconds per plant's test run
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
O = "tests/oracles/"
SD, GR, RG, CL = O + "test_sdedit_oracle.py", O + "test_gradop_oracle.py", O + "test_regions_oracle.py", O + "test_claims.py"
FL = O + "test_flow_oracle.py"
FP = O + "test_flow_panorama_oracle.py"
RJ = "tests/test_regions_joint.py"
SF = "tests/test_semantic_flow.py"
SF_ORACLE = SF + "::test_one_clip_step_on_a_flow_model_equals_a_plain_torch_oracle"

STALE_ADAM = [
    ("guidance/gradop.py", "PALETTE_TEMPERATURE = 0.01", "PALETTE_TEMPERATURE = 0.01\n_STALE = {}"),
    ("guidance/gradop.py", "    optimiser = torch.optim.Adam([z], lr=lr)\n",
     "    optimiser = torch.optim.Adam([z], lr=lr)\n    _prev = _STALE.get(tuple(z.shape))\n"
     "    if _prev is not None:\n        optimiser.state[z] = {k: v.clone() for k, v in _prev.items()}\n"),
    ("guidance/gradop.py", "    with torch.no_grad():\n        result.image = decode(z).detach()",
     "    _STALE[tuple(z.shape)] = optimiser.state[z]\n    with torch.no_grad():\n"
     "        result.image = decode(z).detach()"),
]

PLANTS = {
    "diffusers start round()": ([("guidance/sdedit.py", "return steps - min(int(steps * strength), steps)",
                                  "return steps - min(round(steps * strength), steps)")], [SD]),
    "GradOP+ same re-noise seed every iteration": ([("nodes/gradop.py", "host.derived_seed(seed, 1 + iteration)",
                                                     "host.derived_seed(seed, 1)")], [GR]),
    "decoder bf16 runs in float32": ([("nodes/toolkit/gradients.py", '"bf16": torch.bfloat16,', '"bf16": torch.float32,')],
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
    "regions: edge bands kept as regions": ([("guidance/palette.py",
                                              "keep = (area >= min_pixels) & (interior >= min_pixels * 0.25)",
                                              "keep = (area >= min_pixels)")], [RG]),
    "regions: specks with an interior kept": ([("guidance/palette.py",
                                                "keep = (area >= min_pixels) & (interior >= min_pixels * 0.25)",
                                                "keep = (interior >= min_pixels * 0.25)")], [RG]),
    "regions: nearest mask resize": ([("guidance/regions.py", 'mode="area").squeeze(1)', 'mode="nearest").squeeze(1)')],
                                     [RG]),
    "GradOP (reconstruction) re-noise seed + 0": ([("nodes/gradop.py", "host.derived_seed(seed, 1)), sigma, flow)",
                                                    "host.derived_seed(seed, 0)), sigma, flow)")], [GR]),
    "RGBA keeps the wrong channels": ([("nodes/toolkit/host.py", "return image[..., :3]", "return image[..., 1:]")], [CL]),
    "greyscale not repeated": ([("nodes/toolkit/host.py", "return image.expand(-1, -1, -1, 3)",
                                 "return torch.cat([image, torch.zeros_like(image), torch.zeros_like(image)], -1)")],
                               [CL]),
    "half loss max-pooled": ([("nodes/toolkit/gradients.py", "avg_pool2d(x0, 2) if pooled", "max_pool2d(x0, 2) if pooled")],
                             [GR]),
    "TAESD fed unscaled latents": ([("nodes/toolkit/gradients.py", "return self._decode(x0, clamp)",
                                     "return self._decode(x0 / 0.18215, clamp)")], [GR]),
    "ancestral: same seed every segment": ([("nodes/toolkit/sampling.py",
                                             'args["seed"] = host.derived_seed(self.seed, segment)',
                                             'args["seed"] = self.seed')], [CL]),
    "progress counts sampler steps only": ([("nodes/gradop.py", "sampler_steps + config.total_grad_steps()",
                                             "sampler_steps")], [CL]),
    "decoder fit 7200 -> 7000 bytes per pixel": ([("nodes/toolkit/gradients.py", "KL_DECODER_CHECKPOINTED_BYTES_PER_PIXEL = 7_200",
                                                   "KL_DECODER_CHECKPOINTED_BYTES_PER_PIXEL = 7_000")], [CL]),
    "GradOP+ flow re-noise VE-style z* + s eps": ([("guidance/gradop.py", "return (1.0 - sigma) * z + sigma * noise",
                                                    "return z + sigma * noise")], [FL]),
    "GradOP+ flow VP mapping sqrt(1 + s^2)": ([("guidance/gradop.py",
                                                "return x / math.sqrt((1.0 - sigma) ** 2 + sigma ** 2)",
                                                "return x / math.sqrt(1.0 + sigma ** 2)")], [FL]),
    "SDEdit paper t0 without the flow shift": ([("nodes/toolkit/host.py",
                                                 "return min(max(float(sampling.percent_to_sigma(1.0 - t)), sigma_min), sigma_max)",
                                                 "return min(max(float(t if hasattr(sampling, 'shift') else "
                                                 "sampling.percent_to_sigma(1.0 - t)), sigma_min), sigma_max)")], [FL]),
    "sigma->t table without the fine grid near t = 0": ([("guidance/schedules.py",
                                                          "return torch.unique(torch.cat([uniform, fine]))",
                                                          "return uniform")], [FL]),
    "flow nudge factor 1 + s^2": ([("guidance/panorama.py", "        return (1.0 - sigma) ** 2 + sigma ** 2",
                                    "        return 1.0 + sigma ** 2")], [FP]),
    "flow model taken for a UNet": ([("nodes/panorama/sampler.py",
                                      "flow = isinstance(base_model.model_sampling, comfy.model_sampling.CONST)",
                                      "flow = False")], [FP]),
    "panorama first-order correction dropped": ([("guidance/panorama.py",
                                                  "    return x0_mean + ratio * (x_mean - x).to(x0_mean.dtype)",
                                                  "    return x0_mean")], [FP]),
    "no gradient through Flux (identity fallback)": ([("nodes/toolkit/gradients.py",
                                                       "if probe_gradient(copied) is None:", "if False:")], [FP]),
    "joint regions: peak per head": ([("guidance/regions.py",
                                       "block_peak = scores.amax(dim=(1, 2, 3), keepdim=True)",
                                       "block_peak = scores.amax(dim=(2, 3), keepdim=True)")], [RJ]),
    "joint regions: dense pushes the other tokens up": ([("guidance/regions.py",
                                                          "- scores) - f_out * (scores - scores.amin(-1, keepdim=True))",
                                                          "- scores) + f_out * (scores - scores.amin(-1, keepdim=True))")],
                                                        [RJ]),
    "joint regions: Qwen template cut one token short": ([("nodes/regions.py", "        first += 3", "        first += 2")],
                                                         [RJ]),
    "CLIP paper step on flow: raw sigma^2": ([("guidance/semantic.py",
                                                "torch.where(signal > 0, (sigma / signal.clamp_min(1e-30)) ** 2,",
                                                "torch.where(signal > 0, sigma ** 2,")], [SF_ORACLE]),
    "CLIP cfg 1: zeros taken as the unconditional x0": ([("nodes/semantic.py",
                                                          'uncond = args.get("uncond_denoised") if args.get("uncond") '
                                                          'is not None else None',
                                                          'uncond = args.get("uncond_denoised")')], [SF_ORACLE]),
    "step guard off": ([("nodes/toolkit/guard.py", "        if not bool(bad.any()):\n            return guided",
                         "        if True:\n            return guided")],
                       [SF + "::test_a_bad_clip_gradient_leaves_the_run_unguided_with_one_warning"]),
    "GradOP+ re-noises an iteration with no Adam step": ([("nodes/gradop.py", "if result.skipped == config.grad_steps:",
                                                           "if False:")],
                                                         [SF + "::test_a_non_finite_gradop_gradient_leaves_the_run_"
                                                               "unguided_with_one_warning"]),
    "regions default strength 0.5": ([("nodes/regions.py", "DEFAULT_STRENGTH = 0.4", "DEFAULT_STRENGTH = 0.5")], [CL]),
}


class StalePlant(Exception):
    """A plant whose target text is no longer in the product code (the code moved): re-target it."""


def planted_texts(name: str) -> dict[str, str]:
    """The product files as ``name`` would leave them (in memory; nothing is written). Each edit's old text
    must occur exactly once in the file as the previous edits left it, and the result must still compile."""
    edits, tests = PLANTS[name]
    texts: dict[str, str] = {}
    for path, old, new in edits:
        full = os.path.join(ROOT, path)
        if path not in texts:
            if not os.path.exists(full):
                raise StalePlant(f"plant {name!r}: {path} does not exist")
            texts[path] = open(full).read()
        count = texts[path].count(old)
        if count != 1:
            raise StalePlant(f"plant {name!r} no longer applies: {path} holds its target text {count} times "
                             f"(needs exactly 1): {old!r}")
        texts[path] = texts[path].replace(old, new)
    for path, text in texts.items():
        try:
            compile(text, path, "exec")
        except SyntaxError as error:
            raise StalePlant(f"plant {name!r} leaves {path} unparsable: {error}") from error
    for test in tests:
        test_path, _, test_name = test.partition("::")
        if not os.path.exists(os.path.join(ROOT, test_path)):
            raise StalePlant(f"plant {name!r}: its test file {test_path} does not exist")
        if test_name and f"def {test_name}(" not in open(os.path.join(ROOT, test_path)).read():
            raise StalePlant(f"plant {name!r}: its test {test} does not exist")
    return texts


def check(names) -> list[str]:
    """Every named plant's problems (text match only, no test runs); empty when all apply."""
    problems = []
    for name in names:
        if name not in PLANTS:
            problems.append(f"no plant named {name!r}")
            continue
        try:
            planted_texts(name)
        except StalePlant as error:
            problems.append(str(error))
    return problems


def git_clean():
    out = subprocess.run(["git", "status", "--porcelain", "guidance", "nodes", "web"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    return out == ""


def revert(files):
    subprocess.run(["git", "checkout", "--", *sorted(set(files))], cwd=ROOT, check=True)


def main(names):
    problems = check(names)
    if problems:
        raise SystemExit("plant_bugs: stale plants, nothing was run:\n  " + "\n  ".join(problems))
    if not git_clean():
        raise SystemExit("plant_bugs: guidance/, nodes/ and web/ must have no uncommitted changes (the revert is a "
                         "git checkout)")
    results = {}
    for name in names:
        edits, tests = PLANTS[name]
        texts = planted_texts(name)
        try:
            for path, text in texts.items():
                with open(os.path.join(ROOT, path), "w") as handle:
                    handle.write(text)
            start = time.time()
            try:
                run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                                     cwd=ROOT, capture_output=True, text=True, env=dict(os.environ), timeout=TIMEOUT)
            except subprocess.TimeoutExpired:  # neither killed nor survived: say so and go on with the next plant
                results[name] = {"killed": None, "timed_out": TIMEOUT, "seconds": round(time.time() - start, 1)}
            else:
                tail = [line for line in run.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))
                        or " passed" in line or " failed" in line]
                results[name] = {"killed": run.returncode != 0, "seconds": round(time.time() - start, 1),
                                 "tail": tail[-3:]}
        finally:
            revert(texts)
            assert git_clean()
        print(json.dumps({name: results[name]}), flush=True)
    killed = sum(bool(result["killed"]) for result in results.values())
    timed_out = sum(result["killed"] is None for result in results.values())
    print(f"{killed} of {len(results)} planted bugs killed" + (f", {timed_out} timed out" if timed_out else ""),
          flush=True)
    return results


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if arguments[:1] == ["--check"]:
        found = check(arguments[1:] or list(PLANTS))
        if found:
            raise SystemExit("plant_bugs --check: " + str(len(found)) + " stale:\n  " + "\n  ".join(found))
        print(f"plant_bugs --check: all {len(arguments[1:] or PLANTS)} plants apply")
    else:
        main(arguments or list(PLANTS))
