"""``python -m pytest_decodeperf``: the ``decodeperf`` command (see ``cli.py``)."""

import sys

from .cli import main

sys.exit(main())
