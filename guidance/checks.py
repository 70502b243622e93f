"""Input checks shared by every method; each error names the input it is about. Pure Python and torch."""
from __future__ import annotations

import math
import re
from typing import Sequence

_HEX_COLOUR = re.compile(r"#?([0-9a-fA-F]{6})|#([0-9a-fA-F]{3})")


def check_strength(strength: float, name: str = "strength") -> float:
    """A strength in (0, 1] and finite, as a float; the error names the input."""
    value = float(strength)
    if not math.isfinite(value) or value <= 0.0 or value > 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {strength!r}")
    return value


def check_mask_size(mask_hw: Sequence[int], image_hw: Sequence[int], mask_name: str = "mask",
                    image_name: str = "image") -> None:
    """Masks must cover the guide pixel for pixel; the error names both inputs."""
    if tuple(mask_hw) != tuple(image_hw):
        raise ValueError(f"{mask_name} is {mask_hw[0]}x{mask_hw[1]} (HxW) but {image_name} is "
                         f"{image_hw[0]}x{image_hw[1]}: the mask must have the same size as the image")


def check_mask_batch(mask_batch: int, batch: int, mask_name: str = "mask") -> None:
    """A mask batch of 1 (shared) or of the image batch."""
    if mask_batch not in (1, batch):
        raise ValueError(f"{mask_name} has a batch of {mask_batch}; expected 1 or {batch} (the image batch)")


def parse_hex_colour(text: str, name: str = "colour") -> tuple[float, float, float]:
    """'#rrggbb', 'rrggbb' or '#rgb' -> RGB floats in 0..1; the error names the input."""
    match = _HEX_COLOUR.fullmatch(str(text).strip())
    if not match:
        raise ValueError(f"{name}: {str(text).strip()!r} is not a colour: not a #RRGGBB colour (or #RGB), "
                         f"e.g. #ffffff")
    digits = match.group(1) or "".join(c * 2 for c in match.group(2))
    return tuple(int(digits[i:i + 2], 16) / 255.0 for i in (0, 2, 4))
