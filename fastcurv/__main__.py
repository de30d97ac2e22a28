"""``python -m fastcurv``: the ``fastcurv`` command."""

import sys

from .cli import main

sys.exit(main())
