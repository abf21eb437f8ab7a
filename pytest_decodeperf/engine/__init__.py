"""The engine: models, caches, stream modes, the decode loop, workloads, parity and measurement.

It knows nothing of pytest or asv, and importing it imports torch and transformers. Its sub-packages are
layers; a module may import from its own layer and the layers before it, never after
(``tests/test_layers.py`` enforces the order), and from ``pytest_decodeperf.errors`` and ``.records``:

==========  ===========================================================================================
device      the one seam to CUDA (streams, events, pinned flags), its CPU simulator, the machine
decode      generating tokens: the plugin's loop, generate()'s modes and user decoders, behind one seam
parity      tokens held to a reference: the report, and divergences judged by the logits
spec        what a variant is: the model zoo, workloads (prompts and real stops), the variant matrix
measure     timing, rounds and their statistics, sync and collective counting, the profiler, NVTX
roofline    what a decode step must read (weights, experts, K/V, state) and the device can move
parallel    tensor parallel through torch.distributed: ranks, sharded models, rounds of the slowest rank
(top)       ``runner.py`` (the front door), ``results.py`` (a measured variant and its record),
            ``paired.py`` (single timed rounds on demand: the A/B's unit of work)
==========  ===========================================================================================
"""
