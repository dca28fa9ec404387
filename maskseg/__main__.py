"""Allows `python -m maskseg ...`."""

import sys

from maskseg.cli import main

sys.exit(main())
