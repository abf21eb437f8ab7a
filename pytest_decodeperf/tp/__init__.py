"""Tensor-parallel items (``tp=2``) in pytest: one pytest session per rank, the same items in lockstep.

Two ways to get ranks, one code path inside each:

* **under a launcher** (``torchrun --nproc-per-node G -m pytest ...``, or ``srun`` with ``MASTER_ADDR``/``MASTER_PORT``
  set): every process the launcher started is a rank and a pytest session; ``ranks.py`` joins the process group,
  keeps the ranks in step item by item, and leaves the reporting to rank 0.
* **on one machine, started by the plugin**: the user's session stays out of the group. When it reaches a ``tp=N``
  item it starts N ranks through ``workers.py`` (``launcher.py``), each a pytest session of the same tree with the
  variables torchrun would set (``worker.py``), and has them run the item; their reports and rank 0's record come
  back and are reported as the item's. The ranks stay up for the next item of that size.

``checks.py`` refuses at collection what cannot run: a ``tp`` above the devices (or the launch's size), a model
transformers cannot shard.
"""
