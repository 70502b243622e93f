"""The loss scale of a gradient through a reduced-precision (fp16/bf16) decoder or CLIP, shared by every
gradient-guided method. Pure torch."""
from __future__ import annotations


def default_loss_scale(reduced_precision: bool, pixels_per_image: int) -> float:
    """1 in fp32 (the reference); otherwise the per-image element count, i.e. a per-pixel sum loss."""
    return float(pixels_per_image) if reduced_precision else 1.0
