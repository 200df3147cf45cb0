"""``python -m headend`` runs the CLI."""

import sys

from headend.cli import main

sys.exit(main())
