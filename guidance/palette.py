"""Colour regions of a stroke painting: the palette both GradOP+ (stroke targets per region) and region words
(one phrase per colour) read. Pure torch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Palette:
    """Distinct colours of a stroke painting and one hard mask per colour (reading order)."""

    colours: list[tuple[int, int, int]]  # RGB 0-255, the most frequent exact shade of each region
    masks: torch.Tensor  # [R, H, W] float 0/1, every pixel in exactly one region
    areas: list[float]  # fraction of the image per region

    def hex(self, index: int) -> str:
        return rgb_to_hex(self.colours[index])


def rgb_to_hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*[int(c) for c in rgb])


def erode(masks: torch.Tensor) -> torch.Tensor:
    """3x3 binary erosion of [R, H, W] masks (pixels outside the image count as inside)."""
    padded = F.pad(masks.unsqueeze(1), (1, 1, 1, 1), mode="replicate")
    return -F.max_pool2d(-padded, 3, stride=1).squeeze(1)


def extract_palette(image: torch.Tensor, tolerance: float = 24.0, min_area: float = 0.002,
                    max_regions: int = 32) -> Palette:
    """Colour regions of a stroke painting ``image`` [H, W, 3] in [0, 1].

    Colours closer than ``tolerance`` (Euclidean, 0-255 RGB units) belong to one region. Seeds are
    taken greedily from the most frequent colours; a cluster becomes a region only if it covers at
    least ``min_area`` of the image and is more than an edge band (its 3x3-eroded interior is at
    least a quarter of that minimum). Every pixel, including anti-aliased edge pixels and dropped
    specks, is then assigned to the nearest region colour. Regions are ordered by their first pixel
    in reading order (top row first, left to right).
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"stroke image must be [height, width, 3], got shape {tuple(image.shape)}")
    height, width = image.shape[:2]
    total = height * width
    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).round().reshape(-1, 3)
    min_pixels = max(1.0, float(min_area) * total)

    # Candidate seeds from a coarse histogram (8 levels per channel step), so noisy images stay fast.
    bins = (pixels // 8).long()
    codes = bins[:, 0] * 1024 + bins[:, 1] * 32 + bins[:, 2]
    unique, inverse, counts = torch.unique(codes, return_inverse=True, return_counts=True)
    bin_colour = torch.zeros(len(unique), 3).index_add_(0, inverse, pixels) / counts.unsqueeze(1)
    remaining = counts.clone().float()
    seeds: list[torch.Tensor] = []
    while len(seeds) < max_regions * 2:
        best = int(torch.argmax(remaining))
        if remaining[best] < min_pixels * 0.25:
            break
        centre = bin_colour[best]
        near = (bin_colour - centre).norm(dim=1) <= tolerance
        remaining[near] = 0
        seeds.append(centre)
    if not seeds:
        seeds = [pixels.mean(0)]

    centres = torch.stack(seeds)
    while True:
        label = torch.cdist(pixels, centres).argmin(dim=1)
        onehot = F.one_hot(label, len(centres)).T.reshape(len(centres), height, width).float()
        area = onehot.sum(dim=(1, 2))
        interior = erode(onehot).sum(dim=(1, 2))
        keep = (area >= min_pixels) & (interior >= min_pixels * 0.25)
        if len(centres) > max_regions:
            keep &= area >= torch.sort(area, descending=True).values[max_regions - 1]
        if bool(keep.all()) or not bool(keep.any()):
            if not bool(keep.any()):  # nothing qualifies: keep the largest cluster
                keep = area == area.max()
                centres = centres[keep][:1]
                continue
            break
        centres = centres[keep]

    # The region colour is its most frequent exact shade (what the user painted).
    colours = []
    for r in range(len(centres)):
        members = pixels[label == r].long()
        member_codes = members[:, 0] * 65536 + members[:, 1] * 256 + members[:, 2]
        values, member_counts = torch.unique(member_codes, return_counts=True)
        code = int(values[torch.argmax(member_counts)])
        colours.append((code >> 16, (code >> 8) & 255, code & 255))

    first = [int(torch.nonzero(label == r)[0]) for r in range(len(centres))]
    order = sorted(range(len(centres)), key=lambda r: first[r])
    masks = onehot[order]
    return Palette(colours=[colours[r] for r in order], masks=masks,
                   areas=[float(masks[i].mean()) for i in range(len(order))])
