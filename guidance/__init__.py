"""Host-independent math of the Guided Synthesis pack.

Pure torch (and numpy). Nothing in this package imports ComfyUI: every method is
written as functions over tensors and callables such as ``denoise(x, sigma) -> x0``
or ``decode(z) -> image``, so it can be tested and reused without a host.
"""
