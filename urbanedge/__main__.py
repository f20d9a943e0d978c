"""``python -m urbanedge`` is the same as the ``urbanedge`` command."""

import sys

from urbanedge.cli import main

sys.exit(main())
