"""Compares two GS_RECORD_NUMBERS files: the tensors every graph of the suite output, before and after a change.

    GS_RECORD_NUMBERS=before.pt .venv/bin/python -m pytest tests -m "not server"   # on the old commit
    GS_RECORD_NUMBERS=after.pt  .venv/bin/python -m pytest tests -m "not server"   # on the new one
    .venv/bin/python scripts/compare_numbers.py before.pt after.pt [--rtol 1e-5]

Two runs of the suite in separate processes give bitwise-equal tensors (checked on test_every_option's SAMPLER
sweeps with PYTHONHASHSEED 1 and 2: 189 of 189). They once did not: the SAMPLER forms let uni_pc write into a
SIGMAS tensor that ComfyUI's cache shared with the branch beside it, so the result depended on which branch the
executor ran first, an order that follows Python's per-process string hashing (fixed; see
test_a_sampler_form_never_writes_into_the_sigmas_it_was_given). A difference between two such runs is a bug.

Each test's graphs are matched in the order they ran; a tensor agrees when max|after - before| is at most
rtol * max|before| (the same machine and kernels: the default rtol is fp32's resolution). Prints a line per
disagreement and a summary; exits 1 on any disagreement or on a graph or tensor present on one side only.
"""
from __future__ import annotations

import argparse
import collections
import sys

import torch


def by_test(records) -> dict[str, list[dict]]:
    grouped = collections.defaultdict(list)
    for test, record in records:
        grouped[test].append(record)
    return grouped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rtol", type=float, default=1e-5)
    args = parser.parse_args(argv)
    before = by_test(torch.load(args.before, weights_only=True))
    after = by_test(torch.load(args.after, weights_only=True))
    problems, exact, close = [], 0, 0
    for test in sorted(set(before) | set(after)):
        old, new = before.get(test, []), after.get(test, [])
        if len(old) != len(new):
            problems.append(f"{test}: {len(old)} graphs before, {len(new)} after")
        for index, (a, b) in enumerate(zip(old, new)):
            for key in sorted(set(a) | set(b)):
                if key not in a or key not in b:
                    problems.append(f"{test} graph {index} {key}: only {'before' if key in a else 'after'}")
                    continue
                x, y = a[key], b[key]
                if x.shape != y.shape:
                    problems.append(f"{test} graph {index} {key}: shape {tuple(x.shape)} -> {tuple(y.shape)}")
                    continue
                if torch.equal(x, y):
                    exact += 1
                    continue
                both_nan = torch.isnan(x) & torch.isnan(y)
                diff = (x - y).abs().masked_fill(both_nan, 0).nan_to_num(float("inf")).max().item()
                bound = args.rtol * x.nan_to_num(0).abs().max().item()
                if diff <= bound:
                    close += 1
                else:
                    problems.append(f"{test} graph {index} {key}: max|diff| {diff:.3g} > {bound:.3g}")
    print("\n".join(problems))
    print(f"{len(before)} tests before, {len(after)} after; tensors equal {exact}, within rtol {args.rtol}: {close}, "
          f"disagreeing or unmatched: {len(problems)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
