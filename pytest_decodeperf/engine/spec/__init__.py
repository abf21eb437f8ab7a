"""What a variant is: the model zoo and checkpoints (``models.py``), the workload (prompts and real stops,
``workload.py``), a point of the matrix and the matrix itself (``variants.py``), what refuses a variant
(``checks.py``), the attention kernels a model or a device can run (``attention.py``). May import ``device``,
``decode`` and ``parity``.
"""
