"""The device: the one seam every CUDA call goes through, and what the machine is.

``runtime.py`` (streams, events, pinned flags, async copies: CUDA, the host, and ``sim_cuda.py``'s simulator
with CUDA's visibility rules on the CPU), ``dispatch.py`` (the TorchDispatchMode scaffolding the counters
share), ``machine.py`` (device resolution, what a run measured on, the drift canary), ``bandwidth.py``.
The lowest layer: imports nothing of the engine.
"""
