"""``python -m pki ACTION …`` — the same commands as ``urbanedge pki ACTION …``."""

from __future__ import annotations

import sys

from pki.cli import main

if __name__ == "__main__":
    sys.exit(main())
