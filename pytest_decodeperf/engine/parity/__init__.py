"""Parity: a variant's tokens held to a reference, row by row up to each row's stop.

``compare.py`` (the report: row, position, both tokens), ``judge.py`` (a divergence judged by the reference's
logits: a near-tie is numerics, a confident disagreement a bug), ``reference.py`` (the reference itself:
transformers' generate(), greedy). May import ``device`` and ``decode``.
"""
