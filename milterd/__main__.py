"""``python -m milterd``."""

import sys

from .cli import main

sys.exit(main())
