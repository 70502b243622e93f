"""Sampled mutation testing of the method modules of nodes/ against their graph and oracle tests.

mutmut (``make mutate``) covers guidance/ with the unit tests; the node modules only run inside a ComfyUI host,
where one test file takes a minute on two cores, so mutating every line is out of reach. This script makes
every single-point mutant of each module (comparison, arithmetic, boolean and number-constant changes, a
dropped statement call), draws a seeded random sample per module, and runs the module's tests against each
mutant in a fresh pytest process (``-x``, killed = some test failed or the run timed out). The file is
restored after each mutant (``git checkout``); run it in a worktree of its own, never where you edit.

    COMFYUI_PATH=<host> .venv/bin/python scripts/mutate_nodes.py [--per-module N] [--seed S] [module ...]

Prints one JSON line per mutant and a score per module; survivors show the diff line to judge by hand.
Schema builders (tooltips, defaults, min/max of inputs) and log calls are not mutated.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import random
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = {
    "nodes/sdedit.py": ["tests/test_sdedit_graph.py", "tests/oracles/test_sdedit_oracle.py"],
    "nodes/gradop.py": ["tests/test_gradop_graph.py", "tests/oracles/test_gradop_oracle.py"],
    "nodes/regions.py": ["tests/test_regions_graph.py", "tests/oracles/test_regions_oracle.py"],
    "nodes/panorama/config.py": ["tests/test_panorama_graph.py"],
    "nodes/panorama/tiled_model.py": ["tests/test_panorama_graph.py", "tests/test_panorama_conds.py"],
    "nodes/panorama/sampler.py": ["tests/test_panorama_graph.py", "tests/test_panorama_conds.py"],
    "nodes/panorama/sync_diffusion.py": ["tests/test_panorama_graph.py"],
    "nodes/panorama/seamless_decode.py": ["tests/test_panorama_graph.py"],
    "nodes/panorama/window_conds.py": ["tests/test_panorama_conds.py", "tests/test_panorama_graph.py"],
    "nodes/semantic.py": ["tests/test_semantic_graph.py"],
    "nodes/toolkit/open_clip_model.py": ["tests/test_semantic_graph.py"],
}
SWAP_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
              ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}
LOG_CALLS = {"debug", "info", "warning", "error", "exception"}


def _skipped_ranges(tree: ast.Module) -> list[tuple[int, int]]:
    ranges = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                "schema" in node.name or "inputs" in node.name):
            ranges.append((node.lineno, node.end_lineno))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LOG_CALLS:
            ranges.append((node.lineno, node.end_lineno))
    return ranges


def mutants(source: str) -> list[tuple[str, int, str]]:
    """(mutated source, line, description) for every single-point mutation of ``source``."""
    skipped = _skipped_ranges(ast.parse(source))
    sites = _sites_in(ast.parse(source), skipped)
    out = []
    for index in range(len(sites)):
        tree = ast.parse(source)
        flat = _sites_in(tree, skipped)
        node, kind, extra = flat[index]
        before = ast.unparse(node) if kind != "drop" else ast.unparse(node.value)
        if kind == "compare":
            node.ops[extra] = SWAP_COMPARE[type(node.ops[extra])]()
        elif kind == "binop":
            node.op = SWAP_BINOP[type(node.op)]()
        elif kind == "boolop":
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif kind == "not":
            _replace(tree, node, node.operand)
        elif kind == "constant":
            value = node.value
            node.value = (not value) if isinstance(value, bool) else value + 1
        elif kind == "drop":
            node.value = ast.Constant(None)
        after = "pass" if kind == "drop" else ast.unparse(node if kind != "not" else node.operand)
        out.append((ast.unparse(tree), node.lineno, f"{kind}: {before[:90]} -> {after[:90]}"))
    return out


def _sites_in(tree, skipped):
    sites = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", None)
        if line is None or any(a <= line <= b for a, b in skipped):
            continue
        if isinstance(node, ast.Compare):
            sites.extend((node, "compare", i) for i, op in enumerate(node.ops) if type(op) in SWAP_COMPARE)
        elif isinstance(node, ast.BinOp) and type(node.op) in SWAP_BINOP:
            sites.append((node, "binop", None))
        elif isinstance(node, ast.BoolOp):
            sites.append((node, "boolop", None))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            sites.append((node, "not", None))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            sites.append((node, "constant", None))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            sites.append((node, "drop", None))
    return sites


def _replace(tree, old, new) -> None:
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, field, new)
                return
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if item is old:
                        value[i] = new
                        return


def run_tests(tests: list[str], timeout: int) -> tuple[bool, str]:
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                             capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return True, "timeout"
    tail = [line for line in run.stdout.splitlines() if line.startswith("FAILED") or " passed" in line]
    return run.returncode != 0, (tail[-1] if tail else run.stdout[-200:])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("modules", nargs="*", default=list(TESTS))
    parser.add_argument("--per-module", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--only", default="", help="rerun these mutants: 'nodes/x.py:index,...' (indices as printed)")
    args = parser.parse_args()
    status = subprocess.run(["git", "status", "--porcelain", "nodes", "guidance"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    if status:
        raise SystemExit("nodes/ and guidance/ must have no uncommitted changes (each mutant is reverted by git)")
    baseline = {}
    for module in args.modules if not args.only else []:
        killed, tail = run_tests(TESTS[module], args.timeout)
        if killed:
            raise SystemExit(f"{module}: its tests fail without any mutant ({tail})")
        baseline[module] = True
    scores = {}
    for module in args.modules:
        path = os.path.join(ROOT, module)
        source = open(path).read()
        candidates = mutants(source)
        indices = random.Random(f"{args.seed}:{module}").sample(range(len(candidates)),
                                                                 min(args.per_module, len(candidates)))
        if args.only:
            indices = [int(item.split(":")[1]) for item in args.only.split(",") if item.split(":")[0] == module]
            if not indices:
                continue
        killed_count = 0
        for index in indices:
            mutated, line, description = candidates[index]
            try:
                open(path, "w").write(mutated)
                start = time.time()
                killed, tail = run_tests(TESTS[module], args.timeout)
            finally:
                subprocess.run(["git", "checkout", "--", module], cwd=ROOT, check=True)
            killed_count += killed
            print(json.dumps({"module": module, "index": index, "line": line, "mutant": description, "killed": killed,
                              "seconds": round(time.time() - start, 1), "tail": tail}), flush=True)
        scores[module] = (killed_count, len(indices), len(candidates))
    for module, (killed, sampled, total) in scores.items():
        print(f"{module}: {killed}/{sampled} sampled mutants killed ({total} possible)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
