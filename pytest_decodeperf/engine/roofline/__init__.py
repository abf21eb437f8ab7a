"""The decode roofline: the bytes a decode step must read (``analytic.py``: weights as a step reads them,
``weights.py``; experts the routers picked, ``routing.py``; K/V and recurrent state), the static cache's
allocation (``kv_memory.py``), and a measured variant's figures (``variant.py``). May import every layer
before it (``device`` to ``measure``).
"""
