"""`make bench`: side-by-side timings measured in one run (never part of `make test`).

Each module in bench/sections/ is one capability's section: it defines TITLE and run(host).
`make bench SECTIONS="gradop sdedit"` runs only those; by default every section runs.
Tiny models run on the CPU; full-size SD1.5-architecture rows (random weights, 512x512)
are added when a CUDA device is present.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402


def section_names() -> list[str]:
    chosen = os.environ.get("SECTIONS", "").split()
    available = sorted(p.stem for p in (HERE / "sections").glob("*.py") if not p.stem.startswith("_"))
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise SystemExit(f"unknown bench section(s) {unknown}; available: {available}")
    return chosen or available


def main() -> None:
    host = common.harness.Host(common.harness.temp_workdir())
    for name in section_names():
        module = importlib.import_module(f"sections.{name}")
        print(f"\n== {module.TITLE} ==")
        module.run(host)


if __name__ == "__main__":
    main()
