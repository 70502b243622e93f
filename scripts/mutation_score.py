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
    tested = stats["killed"] + stats["survived"] + stats["timeout"]
    score = stats["killed"] / tested if tested else 0.0
    print(f"mutants: {stats['total']}, killed {stats['killed']}, survived {stats['survived']}, "
          f"timeout {stats['timeout']}, no tests {stats['no_tests']}; "
          f"score (killed / tested) {100 * score:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
