"""The engine: models, caches, stream modes, the decode loop, workloads, parity and measurement.

It knows nothing of pytest or asv, and importing it imports torch and transformers.
"""
