"""Development support for Guided Synthesis, never shipped (.comfyignore): the in-process ComfyUI host
(``harness``), the tiny test nodes it loads (``host_nodes/``), shared graph builders (``graphs``), the tolerance
helpers (``tolerance``), the op-level memory probe (``memory_probe``) and a real server for end-to-end tests
(``server_support``).

Importable with the repository root on ``sys.path``: pytest adds it (``pythonpath`` in pyproject.toml), bench runs
as ``python -m bench`` from the root, and the scripts run as files put the root there in one place
(scripts/workflow_builder.py).
"""
