"""Small API-prompt builders for graph tests (tiny models, real core nodes)."""
from __future__ import annotations


def base(kind: str = "sd15", seed: int = 0, text: str = "a castle on a hill") -> dict:
    """Tiny checkpoint, positive/negative conditioning. Node ids: ckpt 1, positive 2, negative 3."""
    prompt = {"1": {"class_type": "GS_TestTinyCheckpoint", "inputs": {"kind": kind, "seed": seed}}}
    if kind == "sd15":
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
