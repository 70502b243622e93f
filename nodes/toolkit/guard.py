"""The guided-step guard shared by the gradient-guided methods (GradOP+, CLIP Semantic Guidance): no silent NaN.

A guided step is applied only when its result is finite and not absurdly far from the unguided value; otherwise
that sample falls back to the unguided value. The first fallback of a run logs one warning through the pack
logger and shows it on the node that is executing (ComfyUI's progress text under the node), so a user never gets
a silently wrong picture; the run goes on. A non-finite *unguided* value cannot be mended here: it is reported as
the model's (or sampler's) own, not the guidance's.
"""
from __future__ import annotations

import torch

from .log import logger

LOG = logger("guard")
# A guided value whose distance to the unguided one exceeds FAR times the unguided value's RMS (at least 1, the
# order of a unit-variance latent) is absurd: the largest legitimate steps (CLIP guidance's weight 100 times a
# CFG correction, GradOP+'s Adam moves) stay far below it, while an overflowing step (a gradient near the
# dtype's range times sigma_ve^2) lands far above it.
FAR = 1.0e3


def _per_sample(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.ndim - 1)))


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.double().pow(2).flatten(1).mean(dim=1).sqrt()


def finite_per_sample(x: torch.Tensor) -> torch.Tensor:
    """[B] bool: every element of the sample is finite."""
    return torch.isfinite(x).flatten(1).all(dim=1)


def rejected(guided: torch.Tensor, unguided: torch.Tensor, far: float = FAR) -> torch.Tensor:
    """[B] bool: the guided sample is not finite, or ``rms(guided - unguided) > far * max(rms(unguided), 1)``.
    Samples whose unguided value is itself not finite are never rejected (there is nothing to fall back on)."""
    unguided_ok = finite_per_sample(unguided)
    bad = ~finite_per_sample(guided)
    distance = _rms(torch.where(torch.isfinite(guided), guided, torch.zeros_like(guided)).float()
                    - torch.nan_to_num(unguided.float()))
    limit = far * _rms(torch.nan_to_num(unguided.float())).clamp_min(1.0)
    return (bad | (distance > limit)) & unguided_ok


def report(message: str) -> None:
    """``message`` as a warning in the log and as progress text on the node that is executing (nothing is sent
    when no server or node is known: a script, a test without a server). Never raises."""
    LOG.warning("%s", message)
    try:
        from comfy_execution.progress import get_progress_state
        from comfy_execution.utils import get_executing_context
        context = get_executing_context()
        handler = get_progress_state().handlers.get("webui")
        server = getattr(handler, "server_instance", None)
        if context is None or server is None or not hasattr(server, "send_progress_text"):
            return
        server.send_progress_text(message, context.node_id, getattr(server, "client_id", None))
    except Exception as error:  # a report must never stop a run
        LOG.debug("could not show the warning on the node: %s", error)


class StepGuard:
    """One run's guard for one method (``method`` names it in the warning). :meth:`apply` returns the guided
    tensor with every rejected sample replaced by its unguided value; ``fallbacks`` counts them, and the first
    one is reported (:func:`report`); :meth:`skipped` reports a step the caller left unguided for its own reason
    (a loss gradient that stayed non-finite), under the same once-per-run rule."""

    def __init__(self, method: str, far: float = FAR):
        self.method, self.far = method, float(far)
        self.fallbacks = 0
        self.reported = False
        self.unguided_reported = False

    def apply(self, guided: torch.Tensor, unguided: torch.Tensor, what: str = "guided step") -> torch.Tensor:
        bad = rejected(guided, unguided, self.far)
        if not self.unguided_reported and not bool(finite_per_sample(unguided).all()):
            self.unguided_reported = True
            report(f"{self.method}: the model's own (unguided) prediction is not finite at the {what}; guidance "
                   f"cannot mend it (the model, its inputs or the sampler produce it).")
        if not bool(bad.any()):
            return guided
        self.fallbacks += int(bad.sum())
        self._report(f"{self.method}: the {what} would have made the result non-finite or absurdly large, so it "
                     f"was not applied (that step is unguided). Lower the weight or learning rate, or use a "
                     f"higher-precision decoder. Later cases in this run are not reported.")
        return torch.where(_per_sample(bad, guided).to(guided.device), unguided.to(guided.dtype), guided)

    def skipped(self, message: str) -> None:
        self.fallbacks += 1
        self._report(message)

    def _report(self, message: str) -> None:
        if self.reported:
            return
        self.reported = True
        report(message)
