"""Small API-prompt builders for graph tests (tiny models, real core nodes)."""
from __future__ import annotations


def base(kind: str = "sd15", seed: int = 0, text: str = "a castle on a hill") -> dict:
    """Tiny checkpoint, positive/negative conditioning. Node ids: ckpt 1, positive 2, negative 3."""
    prompt = {"1": {"class_type": "GS_TestTinyCheckpoint", "inputs": {"kind": kind, "seed": seed}}}
    if kind in ("sd15", "sd15_inpaint"):
        prompt["2"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text}}
        prompt["3"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}}
    else:
        prompt["2"] = {"class_type": "GS_TestConditioning", "inputs": {"kind": kind, "seed": 1}}
        prompt["3"] = {"class_type": "GS_TestConditioning", "inputs": {"kind": kind, "seed": 2}}
    return prompt


def solid_image(prompt: dict, node_id: str, width=64, height=64, batch=1, color=0x3366CC) -> list:
    prompt[node_id] = {"class_type": "EmptyImage",
                       "inputs": {"width": width, "height": height, "batch_size": batch, "color": color}}
    return [node_id, 0]


def encode(prompt: dict, node_id: str, image: list) -> list:
    prompt[node_id] = {"class_type": "VAEEncode", "inputs": {"pixels": image, "vae": ["1", 2]}}
    return [node_id, 0]


def sdedit(prompt: dict, node_id: str, **overrides) -> list:
    inputs = {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "seed": 7, "steps": 6,
              "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "strength": 0.6,
              "semantics": "paper", "repeats": 1, "strength_sweep": ""}
    inputs.update(overrides)
    prompt[node_id] = {"class_type": "GS_SDEdit", "inputs": inputs}
    return [node_id, 0]


def capture(prompt: dict, node_id: str, key: str, latent=None, image=None, sigmas=None) -> None:
    inputs = {"key": key}
    if latent is not None:
        inputs["latent"] = latent
    if image is not None:
        inputs["image"] = image
    if sigmas is not None:
        inputs["sigmas"] = sigmas
    prompt[node_id] = {"class_type": "GS_TestCapture", "inputs": inputs}


def strokes(prompt: dict, node_id: str, width=32, height=32, left=0xCC3322, right=0x2255CC, batch=1) -> list:
    """Two-colour strokes; output 0 is the IMAGE, output 1 a MASK of the left half."""
    prompt[node_id] = {"class_type": "GS_TestStrokes", "inputs": {"width": width, "height": height, "left": left,
                                                                  "right": right, "batch": batch}}
    return [node_id, 0]


GRADOP_METHOD = {"strength": 0.8, "iterative_steps": 3, "grad_steps": 12, "learning_rate": 0.1,
                 "painting_function": "gaussian blur", "decoder": "auto", "loss_resolution": "full", "mode": "GradOP+", "gamma": 0.001}


def gradop(prompt: dict, node_id: str, strokes_image: list, **overrides) -> list:
    """GS_GradOPPlus on the tiny model; output 0 LATENT, output 1 the optimised IMAGE batch."""
    inputs = {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2],
              "strokes": strokes_image, "seed": 7, "steps": 50, "cfg": 5.0, "sampler_name": "euler",
              "scheduler": "ddim_uniform", **GRADOP_METHOD, "width": 0, "height": 0, "batch_size": 1}
    inputs.update(overrides)
    prompt[node_id] = {"class_type": "GS_GradOPPlus", "inputs": inputs}
    return [node_id, 0]
