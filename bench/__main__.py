"""`make bench` (``python -m bench [section ...]`` from the repository root): side-by-side timings measured in one
run (never part of `make test`).

Each module in bench/sections/ is one capability's section: it defines TITLE and run(host).
`make bench SECTIONS="gradop sdedit"` (or ``python -m bench gradop sdedit``) runs only those; by default every
section runs.
Tiny models run on the CPU; full-size SD1.5-architecture rows (random weights, 512x512)
are added when a CUDA device is present. Section ``flux`` costs Flux.1 dev at 1024x1024 from full-width blocks:
at full size on CUDA, at a smaller size scaled by FLOP / pixel ratios on the CPU (it prints which).
"""
from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
AVAILABLE = sorted(p.stem for p in (HERE / "sections").glob("*.py") if not p.stem.startswith("_"))


def section_names(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*", metavar="section",
                        help=f"sections to run (default: $SECTIONS, else all): {' '.join(AVAILABLE)}")
    chosen = parser.parse_args(argv).sections or os.environ.get("SECTIONS", "").split()
    unknown = [name for name in chosen if name not in AVAILABLE]
    if unknown:
        parser.error(f"unknown bench section(s) {unknown}; available: {AVAILABLE}")
    return chosen or AVAILABLE


def main() -> None:
    names = section_names()
    from bench.common import harness
    host = harness.Host(harness.temp_workdir())
    for name in names:
        module = importlib.import_module(f"bench.sections.{name}")
        print(f"\n== {module.TITLE} ==")
        module.run(host)


if __name__ == "__main__":
    main()
