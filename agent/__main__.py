"""``python -m agent run -c FILE`` runs the gateway agent (same as ``urbanedge run``)."""

import sys

from urbanedge.cli import main

sys.exit(main(sys.argv[1:]))
