"""Dumps every pack node's schema as the frontend receives it (/object_info's entry) to a JSON file, sorted, so
that a refactor can show it left every node's inputs, defaults, choices, tooltips and widget order unchanged.

    .venv/bin/python scripts/dump_schemas.py before.json     # on the old commit
    .venv/bin/python scripts/dump_schemas.py after.json      # on the new one
    cmp before.json after.json
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from workflow_builder import harness  # puts the repository root on sys.path, in one place


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__)
        return 2
    harness.put_host_first()
    with tempfile.TemporaryDirectory() as workdir:
        host = harness.Host(Path(workdir))
        info = {name: cls.GET_NODE_INFO_V1() for name, cls in sorted(host.nodes.NODE_CLASS_MAPPINGS.items())
                if name.startswith("GS_") and not name.startswith("GS_Test")}
    Path(args[0]).write_text(json.dumps(info, indent=1, sort_keys=True, default=repr) + "\n")
    print(f"{len(info)} node schemas written to {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
