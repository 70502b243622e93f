"""The pack's one logger: ``guided_synthesis`` (a user sets its level once, for the whole pack), with a child per
module (``guided_synthesis.gradop``, ...). Module ``__name__`` is not used: under ComfyUI it is the pack folder's
file-system path."""
from __future__ import annotations

import logging

ROOT = "guided_synthesis"


def logger(name: str) -> logging.Logger:
    """``guided_synthesis.<name>``."""
    return logging.getLogger(f"{ROOT}.{name}")
