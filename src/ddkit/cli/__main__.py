"""``python -m ddkit.cli``: the ``ddkit`` command (as torchrun runs it)."""

import sys

from . import main

sys.exit(main())
