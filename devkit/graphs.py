"""Small API-prompt builders for graph tests (tiny models, real core nodes)."""
from __future__ import annotations


FLOW_KINDS = ("flux_dev", "flux_schnell", "sd35", "chroma", "qwen_image", "z_image")


def base(kind: str = "sd15", seed: int = 0, text: str = "a castle on a hill") -> dict:
    """Tiny checkpoint, positive/negative conditioning. Node ids: ckpt 1, positive 2, negative 3. A flow kind
    (FLOW_KINDS) loads the tiny flow transformer; its positive carries a FluxGuidance value (read by Flux.1 dev,
    ignored by the others)."""
    if kind in FLOW_KINDS:
        return {"1": {"class_type": "GS_TestTinyFlowCheckpoint", "inputs": {"kind": kind, "seed": seed}},
                "2t": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text}},
                "2": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["2t", 0], "guidance": 3.5}},
                "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}}}
    prompt = {"1": {"class_type": "GS_TestTinyCheckpoint", "inputs": {"kind": kind, "seed": seed}}}
    if kind in ("sd15", "sd15_inpaint"):
        prompt["2"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text}}
        prompt["3"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}}
    else:
        prompt["2"] = {"class_type": "GS_TestConditioning", "inputs": {"kind": kind, "seed": 1}}
        prompt["3"] = {"class_type": "GS_TestConditioning", "inputs": {"kind": kind, "seed": 2}}
    return prompt


def flow_txt2img(kind: str, text: str = "a castle on a hill", text_encoder: str | None = None, seed: int = 1,
                 steps: int = 2, cfg: float | None = None) -> dict:
    """Text-to-image on a tiny flow transformer with its own node ids: checkpoint ck, prompts pos/neg, FluxGuidance
    guided (read by Flux.1 dev, ignored by the others), EmptySD3LatentImage latent, KSampler sample (euler, simple;
    cfg 1 on Flux, else 2), decode, and captures 'image' (out) and 'latent' (out_latent)."""
    checkpoint = {"kind": kind, "seed": 0}
    if text_encoder is not None:
        checkpoint["text_encoder"] = text_encoder
    return {
        "ck": {"class_type": "GS_TestTinyFlowCheckpoint", "inputs": checkpoint},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["ck", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ck", 1]}},
        "guided": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["pos", 0], "guidance": 3.5}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["ck", 0], "seed": seed, "steps": steps,
            "cfg": cfg if cfg is not None else (1.0 if kind.startswith("flux") else 2.0),
            "sampler_name": "euler", "scheduler": "simple", "positive": ["guided", 0], "negative": ["neg", 0],
            "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ck", 2]}},
        "out": {"class_type": "GS_TestCapture", "inputs": {"key": "image", "image": ["decode", 0]}},
        "out_latent": {"class_type": "GS_TestCapture", "inputs": {"key": "latent", "latent": ["sample", 0]}},
    }


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


def ksampler_advanced(prompt: dict, node_id: str, latent: list, steps: int, seed: int, start: int = 0,
                      end: int = 10000, sampler: str = "euler", scheduler: str = "normal", cfg: float = 5.0,
                      add_noise: bool = True, leftover: bool = False) -> list:
    """ComfyUI's KSamplerAdvanced on the tiny model (node 1, conditionings 2 and 3); output 0 LATENT."""
    prompt[node_id] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": latent,
        "add_noise": "enable" if add_noise else "disable", "noise_seed": seed, "steps": steps, "cfg": cfg,
        "sampler_name": sampler, "scheduler": scheduler, "start_at_step": start, "end_at_step": end,
        "return_with_leftover_noise": "enable" if leftover else "disable"}}
    return [node_id, 0]


# GS_SyncDiffusion's inputs on the tiny model: a 64x32 canvas, 32 px windows at stride 16, two euler steps,
# sync off (MultiDiffusion); tests override what they study.
SYNCDIFFUSION = {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "width": 64,
                 "height": 32, "batch_size": 1, "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
                 "scheduler": "ddim_uniform", "window_size": 32, "stride": 16, "sync_weight": 0.0, "decay": 0.95,
                 "sync_steps": 1, "sync_every": 1, "anchor": -1, "lpips_net": "vgg", "loss_decoder": "auto",
                 "unet_jacobian": "exact", "loop": False, "window_batch": 4}
# the node form's sampling inputs, which the SAMPLER form takes from the sampling node instead
SAMPLING_INPUTS = ("model", "positive", "negative", "width", "height", "batch_size", "seed", "steps", "cfg",
                   "scheduler")


def syncdiffusion(prompt: dict, node_id: str, **overrides) -> list:
    """GS_SyncDiffusion (the full node: empty canvas to LATENT); output 0 LATENT."""
    prompt[node_id] = {"class_type": "GS_SyncDiffusion", "inputs": {**SYNCDIFFUSION, **overrides}}
    return [node_id, 0]


# the panorama graph tests' synced run: a 96x32 canvas (12x4 latent), 32 px windows at stride 16 (5 windows),
# four steps, sync weight 20 on the first two
SYNCED_PANORAMA = {"width": 96, "height": 32, "seed": 5, "steps": 4, "window_size": 32, "stride": 16,
                   "sync_weight": 20.0, "sync_steps": 2, "window_batch": 8, "sync_batch": 4}


def panorama(prompt: dict, node_id: str, key: str, **overrides) -> list:
    """``syncdiffusion`` with SYNCED_PANORAMA and ``overrides``, and a GS_TestCapture ``<id>c`` of its LATENT under
    ``key``; output 0 LATENT."""
    out = syncdiffusion(prompt, node_id, **{**SYNCED_PANORAMA, **overrides})
    capture(prompt, node_id + "c", key, latent=out)
    return out


def syncdiffusion_sampler(prompt: dict, node_id: str, **overrides) -> list:
    """GS_SyncDiffusionSampler, from the same keywords as ``syncdiffusion`` (its sampling inputs are left out: the
    sampling node supplies them); output 0 SAMPLER."""
    inputs = {k: v for k, v in {**SYNCDIFFUSION, **overrides}.items() if k not in SAMPLING_INPUTS}
    prompt[node_id] = {"class_type": "GS_SyncDiffusionSampler", "inputs": inputs}
    return [node_id, 0]


def empty_latent(prompt: dict, node_id: str, width: int = 32, height: int = 32, batch: int = 1) -> list:
    """EmptyLatentImage; output 0 LATENT."""
    prompt[node_id] = {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height,
                                                                     "batch_size": batch}}
    return [node_id, 0]


def ksampler_select(prompt: dict, node_id: str, sampler_name: str = "euler") -> list:
    """KSamplerSelect; output 0 SAMPLER."""
    prompt[node_id] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler_name}}
    return [node_id, 0]


def basic_scheduler(prompt: dict, node_id: str, steps: int, scheduler: str = "normal", denoise: float = 1.0,
                    model=("1", 0)) -> list:
    """BasicScheduler on ``model`` (the tiny checkpoint by default); output 0 SIGMAS."""
    prompt[node_id] = {"class_type": "BasicScheduler", "inputs": {"model": list(model), "scheduler": scheduler,
                                                                  "steps": steps, "denoise": denoise}}
    return [node_id, 0]


def sampler_custom(prompt: dict, node_id: str, sampler: list, sigmas: list, latent: list, seed: int,
                   cfg: float = 5.0, model=("1", 0), positive=("2", 0), negative=("3", 0),
                   add_noise: bool = True) -> list:
    """SamplerCustom (conditionings 2 and 3 by default); output 0 LATENT."""
    prompt[node_id] = {"class_type": "SamplerCustom", "inputs": {
        "model": list(model), "add_noise": add_noise, "noise_seed": seed, "cfg": cfg, "positive": list(positive),
        "negative": list(negative), "sampler": list(sampler), "sigmas": list(sigmas), "latent_image": list(latent)}}
    return [node_id, 0]


def sampler_custom_advanced(prompt: dict, node_id: str, noise_id: str, guider_id: str, sampler: list,
                            sigmas: list, latent: list, seed: int, cfg: float = 5.0, model=("1", 0),
                            positive=("2", 0), negative=("3", 0)) -> list:
    """SamplerCustomAdvanced with a RandomNoise (``noise_id``) and a CFGGuider (``guider_id``); output 0 LATENT."""
    prompt[noise_id] = {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}}
    prompt[guider_id] = {"class_type": "CFGGuider", "inputs": {"model": list(model), "positive": list(positive),
                                                               "negative": list(negative), "cfg": cfg}}
    prompt[node_id] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": [noise_id, 0], "guider": [guider_id, 0], "sampler": list(sampler), "sigmas": list(sigmas),
        "latent_image": list(latent)}}
    return [node_id, 0]


def custom_sampling(prompt: dict, node_id: str, sampler: list, steps: int, seed: int, width: int = 32,
                    height: int = 32, scheduler: str = "ddim_uniform", cfg: float = 5.0, model=("1", 0),
                    positive=("2", 0), negative=("3", 0), latent: list | None = None,
                    scheduler_model=None) -> list:
    """A SAMPLER run through SamplerCustom on an empty latent: BasicScheduler ``<id>s`` (on ``scheduler_model``,
    by default ``model``), EmptyLatentImage ``<id>l`` (unless ``latent`` is given), SamplerCustom ``<id>k``;
    output 0 LATENT."""
    sigmas = basic_scheduler(prompt, node_id + "s", steps, scheduler, model=scheduler_model or model)
    if latent is None:
        latent = empty_latent(prompt, node_id + "l", width, height)
    return sampler_custom(prompt, node_id + "k", sampler, sigmas, latent, seed, cfg, model, positive, negative)
