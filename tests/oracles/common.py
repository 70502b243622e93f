"""Graph builders and comparison helpers shared by the oracle tests."""
import torch


def base_prompt(clip: bool = False) -> dict:
    """Tiny SD1 checkpoint (node 1: MODEL 0, CLIP 1 only with ``clip``, VAE 2; the same seeded weights either way) and
    seeded random conditionings: positive (2, seed 1), negative (3, seed 2)."""
    return {
        "1": {"class_type": "GS_TestTinyCheckpoint" if clip else "GS_TestTinyModelVAE",
              "inputs": {"kind": "sd15", "seed": 0}},
        "2": {"class_type": "GS_TestConditioning", "inputs": {"kind": "sd15", "seed": 1}},
        "3": {"class_type": "GS_TestConditioning", "inputs": {"kind": "sd15", "seed": 2}},
    }


def capture(prompt, node_id, key, **inputs):
    prompt[node_id] = {"class_type": "GS_TestCapture", "inputs": {"key": key, **inputs}}


def max_difference(a, b) -> float:
    return float((a.double() - b.double()).abs().max())
