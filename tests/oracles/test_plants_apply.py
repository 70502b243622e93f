"""The planted-bug runner (plant_bugs.py) stays usable: every plant's target text is still in the product code,
exactly once, and the planted file still compiles. Text only: no plant is written and no test runs."""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_every_plant_still_applies():
    run = subprocess.run([sys.executable, str(HERE / "plant_bugs.py"), "--check"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all 47 plants apply" in run.stdout


def test_a_stale_plant_is_named(monkeypatch):
    sys.path.insert(0, str(HERE))
    try:
        import plant_bugs
    finally:
        sys.path.remove(str(HERE))
    monkeypatch.setitem(plant_bugs.PLANTS, "moved", ([("guidance/gradop.py", "text that is not there", "x")], []))
    problems = plant_bugs.check(["moved", "blur sigma 7 -> 6"])
    assert len(problems) == 1 and "'moved' no longer applies" in problems[0]
    monkeypatch.setitem(plant_bugs.PLANTS, "broken", ([("guidance/gradop.py", "REFERENCE_BLUR_SIGMA = 7.0",
                                                        "REFERENCE_BLUR_SIGMA = (")], []))
    assert "unparsable" in plant_bugs.check(["broken"])[0]
