"""Measuring a generation: the clock and the rounds (``rounds.py``), their statistics (``stats.py``), blocking
device reads counted by op and line (``syncs.py``, ``counting.py``), collectives (``collectives.py``), the
profiler (``profiling.py``), NVTX ranges (``nvtx.py``). May import ``device``, ``decode``, ``parity``, ``spec``.
"""
