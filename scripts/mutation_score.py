"""Print the surviving mutants and the mutation score of the last `mutmut run` (called by `make mutate`)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

STATS = Path("mutants") / "mutmut-cicd-stats.json"


def main() -> int:
    mutmut = [sys.executable, "-m", "mutmut"]
    subprocess.run([*mutmut, "results"], check=False)  # the survivors, one per line
    subprocess.run([*mutmut, "export-cicd-stats"], check=True, capture_output=True)
    stats = json.loads(STATS.read_text())
    detected = stats["killed"] + stats["timeout"]  # a mutant that makes the tests run 30x longer is caught too
    # every mutant checked so far; "no tests" mutants count as survivors here
    considered = sum(stats.get(key, 0) for key in ("killed", "survived", "timeout", "no_tests", "suspicious",
                                                    "segfault"))
    score = detected / considered if considered else 0.0
    strict = stats["killed"] / considered if considered else 0.0
    print(f"mutants: {stats['total']}, killed {stats['killed']}, survived {stats['survived']}, "
          f"timeout {stats['timeout']}, no tests {stats['no_tests']}, not checked {stats['total'] - considered}; "
          f"score (killed + timeout) / all {100 * score:.1f} % (mutmut's own measure), "
          f"killed / all {100 * strict:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
