"""Tensor parallel through torch.distributed: the ranks and their process groups (``distributed.py``), models
loaded sharded, rounds combined as the slowest rank's, every rank's tokens compared (``tensor_parallel.py``).
May import every layer before it.
"""
