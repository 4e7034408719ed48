"""``python -m fvlens.cli`` is the ``fvlens`` command."""

import sys

from fvlens.cli import main

sys.exit(main())
