"""The suite keeps to its tolerance rule (README "Comparing numbers in tests"), checked on the source of tests/ and
devkit/ (the development package: harness, test nodes, graph builders):

* ``torch.testing.assert_close`` / ``allclose`` / ``isclose`` called directly must carry a comment on the call's
  lines: ``# exact: <why>`` (the very same call, or no float arithmetic) or ``# abs: <why>`` (an absolute bound
  whose reason names the data's scale). Every other comparison goes through devkit/tolerance.py, which refuses a
  relative tolerance below the dtype's resolution at run time. (A ``not allclose`` is a "they differ" check: free.)
  ``math.isclose`` with ``rel_tol`` >= 1e-5 and no ``abs_tol`` is a relative bound on Python floats: free.
* An upper bound on a difference (``(a - b).abs().max() < 1e-5``, ``max_difference(a, b) < 1e-5``) must be
  relative (the bound names a scale) or carry ``# abs: <why>``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import torch

from devkit.tolerance import assert_close_across_paths, close_across_paths

TESTS = Path(__file__).resolve().parent
CHECKED = (TESTS, TESTS.parent / "devkit")
DIRECT = {"assert_close", "allclose", "isclose", "assert_allclose"}
MARKER = re.compile(r"#.*\b(exact|abs):\s*\S")


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _is_difference(node: ast.expr) -> bool:
    """``max_difference(...)`` or a ``....abs().max()`` chain anywhere in ``node``."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and _name(sub.func) == "max_difference":
            return True
        if (isinstance(sub, ast.Call) and _name(sub.func) == "max" and isinstance(sub.func, ast.Attribute)
                and isinstance(sub.func.value, ast.Call) and _name(sub.func.value.func) == "abs"):
            return True
    return False


def _is_constant(node: ast.expr) -> bool:
    return not any(isinstance(sub, (ast.Name, ast.Attribute, ast.Call, ast.Subscript)) for sub in ast.walk(node))


def _relative_scalar(call: ast.Call) -> bool:
    """``math.isclose(a, b, rel_tol=1e-5)``: a relative bound on Python floats (no abs_tol) at or above 1e-5."""
    if ast.unparse(call.func) != "math.isclose":
        return False
    keywords = {k.arg: k.value for k in call.keywords}
    try:
        return "abs_tol" not in keywords and float(ast.literal_eval(keywords["rel_tol"])) >= 1e-5
    except (KeyError, ValueError):
        return False


def violations(source: str, filename: str = "<test>") -> list[str]:
    tree = ast.parse(source)
    lines = source.splitlines()
    negated = {id(node.operand) for node in ast.walk(tree) if isinstance(node, ast.UnaryOp)
               and isinstance(node.op, ast.Not)}

    def marked(node: ast.AST) -> bool:
        return any(MARKER.search(line) for line in lines[node.lineno - 1:node.end_lineno])

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node.func) in DIRECT and id(node) not in negated:
            if not marked(node) and not _relative_scalar(node):
                found.append(f"{filename}:{node.lineno}: {_name(node.func)} without '# exact: <why>' or "
                             "'# abs: <why>': compare across paths with tolerance.assert_close_across_paths")
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for left, op, right in zip(operands, node.ops, operands[1:]):
                upper = ((isinstance(op, (ast.Lt, ast.LtE)) and _is_difference(left) and _is_constant(right))
                         or (isinstance(op, (ast.Gt, ast.GtE)) and _is_difference(right) and _is_constant(left)))
                if upper and not marked(node):
                    found.append(f"{filename}:{node.lineno}: absolute bound on a difference without '# abs: <why>'"
                                 ": make it relative to the data's scale")
    return found


def test_every_comparison_in_tests_keeps_to_the_rule():
    found = []
    for path in sorted(p for folder in CHECKED for p in folder.rglob("*.py")):
        if path.name in ("tolerance.py", "test_tolerances.py"):
            continue
        found += violations(path.read_text(), str(path.relative_to(TESTS.parent)))
    assert not found, "\n".join(found)


def test_the_check_catches_what_it_should():
    bad = ("torch.testing.assert_close(a, b, atol=1e-6, rtol=0)\n"
           "assert torch.allclose(a, b)\n"
           "assert (a - b).abs().max() < 1e-5\n"
           "assert 1e-6 > max_difference(a, b)\n"
           "assert math.isclose(a, b, rel_tol=1e-6)\n")
    assert len(violations(bad)) == 5
    good = ("torch.testing.assert_close(a, b, rtol=0, atol=0)  # exact: a slice, no arithmetic\n"
            "assert not torch.allclose(a, b)\n"
            "assert (a - b).abs().max() < 1e-3 * scale\n"
            "assert (a - b).abs().max() > 1e-3\n"
            "assert max_difference(a, b) < 2 / 255  # abs: 8-bit colours in [0, 1]\n"
            "assert math.isclose(a, b, rel_tol=1e-5)\n")
    assert violations(good) == []


def test_the_helper_refuses_a_bound_below_the_resolution():
    x = torch.full((4,), 6.0)
    assert_close_across_paths(x + 4e-6, x, why="two ulps off, well inside 1e-5 relative")
    for rtol, dtype in ((1e-6, torch.float32), (1e-3, torch.float16), (1e-2, torch.bfloat16)):
        try:
            assert_close_across_paths(x.to(dtype), x.to(dtype), rtol=rtol, why="refused")
        except ValueError as error:
            assert "resolution" in str(error)
        else:
            raise AssertionError(f"rtol {rtol} accepted for {dtype}")
    try:
        assert_close_across_paths(x + 1e-3, x, why="a real difference")
    except AssertionError as error:
        assert "a real difference" in str(error)
    else:
        raise AssertionError("a 1.7e-4 relative difference passed rtol 1e-5")
    # the absolute floor follows the tensor's scale: an element near zero is judged against max |expected|
    y = torch.tensor([1000.0, 0.0])
    assert_close_across_paths(y + torch.tensor([0.0, 5e-3]), y, why="5e-3 next to 1000: rounding")
    assert not close_across_paths(y + torch.tensor([0.0, 5e-2]), y)
