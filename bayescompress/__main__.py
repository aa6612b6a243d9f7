"""``python -m bayescompress``: the command line (also what ``torchrun -m bayescompress`` runs)."""

import sys

from bayescompress.cli import main

sys.exit(main())
