"""MultiDiffusion and SyncDiffusion on tiny Flux.1 dev (guidance-distilled: cfg 1, FluxGuidance 3.5; the sync loss
goes through the model's one prediction, there is no negative) against a plain-torch oracle written here from the
algorithm (docs/methods/panorama.md sections 1, 2 and 4), importing nothing from ``guidance`` or ``nodes``.

The oracle calls the tiny Flux transformer's plain forward (the same seeded weights the executor builds), decodes
with the tiny flow VAE's ``first_stage_model.decode`` and measures LPIPS with the ``lpips`` wheel on the test's
trunk file. It writes out: the flow parameterisation (x = (1 - s) x0 + s eps; x0 = x - s v), Flux's latent scaling,
KSampler's noise, the window plan, the anchor, the per-window nudge x_v <- x_v - w_i ((1 - s)^2 + s^2) dL/dx_v, each
window's own Euler step from its nudged copy and the per-pixel average of the windows' steps. Only the sigmas
come from the graph (BasicScheduler 'simple', the schedule is not what is tested here).
"""
import pytest
import torch

from devkit import harness
from devkit.tolerance import ORACLE, assert_close_across_paths

from .common import capture

WIDTH, HEIGHT, WINDOW, STRIDE, SEED, STEPS = 128, 64, 64, 32, 3, 3
TEXT, GUIDANCE = "a castle on a hill", 3.5
FLUX_SCALE, FLUX_SHIFT = 0.3611, 0.1159  # Flux latent format: model space = (raw - shift) * scale
SYNC_WEIGHT, SYNC_STEPS, DECAY = 20.0, 2, 0.95
SYNC_EFFECT = 1e-2  # the least relative change sync makes to the result here (see the test)
RTOL = 1e-5  # node vs oracle, relative to the latent's largest value (measured 9e-7 with sync; see the test)


def flux_graph() -> dict:
    prompt = {
        "ck": {"class_type": "GS_TestTinyFlowCheckpoint", "inputs": {"kind": "flux_dev", "seed": 0}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": TEXT, "clip": ["ck", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ck", 1]}},
        "guided": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["pos", 0], "guidance": GUIDANCE}},
        "sig": {"class_type": "BasicScheduler", "inputs": {"model": ["ck", 0], "scheduler": "simple", "steps": STEPS,
                                                          "denoise": 1.0}},
    }
    capture(prompt, "sigc", "sigmas", sigmas=["sig", 0])
    return prompt


def add_panorama(prompt: dict, node_id: str, key: str, sync_weight: float, **overrides) -> None:
    prompt[node_id] = {"class_type": "GS_SyncDiffusion", "inputs": {
        "model": ["ck", 0], "positive": ["guided", 0], "negative": ["neg", 0], "vae": ["ck", 2], "width": WIDTH,
        "height": HEIGHT, "batch_size": 1, "seed": SEED, "steps": STEPS, "cfg": 1.0, "sampler_name": "euler",
        "scheduler": "simple", "window_size": WINDOW, "stride": STRIDE, "sync_weight": sync_weight, "decay": DECAY,
        "sync_steps": SYNC_STEPS, "sync_every": 1, "anchor": -1, "lpips_net": "vgg", "loss_decoder": "fp32",
        "unet_jacobian": "exact", "loop": False, "window_batch": 1, "sync_batch": 1, **overrides}}
    capture(prompt, node_id + "c", key, latent=[node_id, 0])


class FlowOracle:
    """Tiny Flux.1 dev as plain torch modules, from the same seeds as GS_TestTinyFlowCheckpoint."""

    def __init__(self, lpips_file):
        nodes = harness.test_nodes_module()
        self.transformer = nodes.tiny_flow.tiny_flow_model("flux_dev", 0).model.diffusion_model
        self.decoder = nodes.tiny_flow.tiny_flow_vae(0).first_stage_model
        for module in (self.transformer, self.decoder):
            module.requires_grad_(False).eval()
        clip = nodes.tiny.tiny_clip(0)
        self.context, self.pooled = clip.encode_from_tokens(clip.tokenize(TEXT), return_pooled=True)
        self.lpips = nodes.panorama_oracle.oracle_lpips("vgg", str(lpips_file))

    def x0(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Flow matching: the transformer predicts the velocity v = eps - x0, so x0 = x - sigma v."""
        b = x.shape[0]
        v = self.transformer(x, torch.full((b,), sigma), context=self.context.expand(b, -1, -1),
                             y=self.pooled.expand(b, -1), guidance=torch.full((b,), GUIDANCE))
        return x - sigma * v.float()

    def image(self, x0: torch.Tensor) -> torch.Tensor:
        """The decoded window in [0, 1]: Flux's latent unscaling, the VAE decoder, clamp."""
        raw = x0 / FLUX_SCALE + FLUX_SHIFT
        return ((self.decoder.decode(raw).float() + 1) / 2).clamp(0, 1)

    def run(self, sigmas: torch.Tensor, sync_weight: float, nudge_factor=None) -> torch.Tensor:
        nudge_factor = nudge_factor or (lambda s: (1 - s) ** 2 + s ** 2)
        width = WIDTH // 8
        window, stride = WINDOW // 8, STRIDE // 8
        lefts = list(range(0, width - window + 1, stride))
        if lefts[-1] != width - window:
            lefts.append(width - window)
        anchor = len(lefts) // 2
        noise = torch.randn(1, 16, HEIGHT // 8, width, generator=torch.manual_seed(SEED))
        x = float(sigmas[0]) * noise  # the empty latent is 0: x = s eps + (1 - s) 0
        for i in range(len(sigmas) - 1):
            sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
            sync = sync_weight > 0 and i < SYNC_STEPS
            weight = sync_weight * DECAY ** i
            with torch.no_grad():
                anchor_image = self.image(self.x0(x[..., lefts[anchor]:lefts[anchor] + window], sigma)) if sync else None
            total, count = torch.zeros_like(x), torch.zeros_like(x)
            for v, left in enumerate(lefts):
                xv = x[..., left:left + window].clone()
                if sync and v != anchor:
                    # ComfyUI's Flux blocks add residuals in place into tensors autograd saved: it keeps copies
                    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(),
                                                                                      lambda t: t):
                        leaf = xv.clone().requires_grad_(True)
                        loss = self.lpips(self.image(self.x0(leaf, sigma)) * 2 - 1, anchor_image * 2 - 1).sum()
                        (grad,) = torch.autograd.grad(loss, leaf)
                    xv = xv - weight * nudge_factor(sigma) * grad
                with torch.no_grad():
                    x0 = self.x0(xv, sigma)
                # the window's own Euler step of dx/ds = (x - x0) / s from its nudged copy
                total[..., left:left + window] += xv + (sigma_next - sigma) * (xv - x0) / sigma
                count[..., left:left + window] += 1
            x = total / count
        return x / FLUX_SCALE + FLUX_SHIFT  # the node's LATENT is in the VAE's space


def relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def lpips_file(host, tmp_path_factory):
    import folder_paths
    folder = tmp_path_factory.mktemp("lpips_flow")
    paths = harness.write_lpips_trunks(folder, nets=("vgg",))
    folder_paths.add_model_folder_path("lpips", str(folder), is_default=True)
    folder_paths.filename_list_cache.pop("lpips", None)
    yield paths["vgg"]
    folder_paths.folder_names_and_paths["lpips"][0].remove(str(folder))
    folder_paths.filename_list_cache.pop("lpips", None)


def test_flux_dev_multidiffusion_and_syncdiffusion_match_the_flow_oracle(host, store, lpips_file):
    """Three 64-px windows over 128x64 px, three euler steps of the 'simple' schedule, sync in the first two at
    w = 20, decay 0.95. The node's result matches the oracle to RTOL relative to the latent's largest value
    (every window one at a time on both sides; the LPIPS gradient is taken through the transformer, the VAE decoder
    and VGG in another order of operations, and the nudge amplifies its rounding), while the sync changes the
    result by more than SYNC_EFFECT and the UNet nudge factor 1 + s^2 on this flow model would move it by more
    than the tolerance (checked on the oracle itself)."""
    prompt = flux_graph()
    add_panorama(prompt, "multi", "multi", 0.0)
    add_panorama(prompt, "sync", "sync", SYNC_WEIGHT)
    add_panorama(prompt, "approx", "approx", SYNC_WEIGHT, unet_jacobian="none (approximate)")
    host.run(prompt)
    oracle = FlowOracle(lpips_file)
    sigmas = store["sigmas"]
    multi = oracle.run(sigmas, 0.0)
    assert_close_across_paths(store["multi"], multi, rtol=1e-5, why=ORACLE)
    synced = oracle.run(sigmas, SYNC_WEIGHT)
    print("node vs oracle (sync):", relative(store["sync"], synced), "sync effect:", relative(synced, multi),
          "approx:", relative(store["approx"], synced))
    assert relative(store["sync"], synced) < RTOL, relative(store["sync"], synced)
    assert relative(synced, multi) > SYNC_EFFECT, relative(synced, multi)
    unet_factor = oracle.run(sigmas, SYNC_WEIGHT, nudge_factor=lambda s: 1 + s ** 2)
    assert relative(unet_factor, synced) > 10 * RTOL, relative(unet_factor, synced)
    # the gradient went through the transformer: the identity-Jacobian approximation lands elsewhere
    assert relative(store["approx"], synced) > 10 * RTOL, relative(store["approx"], synced)
