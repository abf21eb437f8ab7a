"""Generating tokens: one seam, many generations.

``generation.py`` is the seam: the plugin's decode loop (``loop.py``, with its caches ``caches.py`` and stop
policies ``stream_modes.py``), transformers' generate() (``hf_generate.py``) and a user's own decoder
(``custom.py``) are each a ``Generation`` that the runner drives one way, observed through ``observe.py``
(timing, sync counting and NVTX hook in there; a generation that does not mark its own steps is observed through
forward hooks on the model). ``forward.py`` calls a model's forward the way generate() does (positions, masks,
the cache keyword); ``masks.py`` and ``hidden_syncs.py`` keep that free of host reads; ``refusals.py`` says what
the loop cannot drive. May import ``device``.
"""
