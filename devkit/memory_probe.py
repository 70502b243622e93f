"""Peak tensor memory of a computation on any device (the CPU included), by watching every op.

A ``TorchDispatchMode`` sees each op's outputs (forward, backward and checkpoint recomputation alike);
their storages are tracked by weak reference and the live bytes summed after every op. Tensors that
existed before the call (weights, inputs) are not counted: the result is the extra peak the
computation needs, what ``torch.cuda.max_memory_allocated`` minus the start would show, without the
allocator's rounding and caching.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _PeakTracker(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        for key, (ref, nbytes) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.current -= nbytes
        return out


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Run ``fn()`` and return the peak bytes of the tensors it allocated that were alive at once."""
    tracker = _PeakTracker()
    with tracker:
        fn()
    return tracker.peak
