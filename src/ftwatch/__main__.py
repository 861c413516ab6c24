"""``python -m ftwatch`` runs the command line."""

import sys

from ftwatch.cli import main

sys.exit(main())
