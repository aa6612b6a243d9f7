"""``python -m bayescompress``: the command line (also what ``torchrun -m bayescompress`` runs)."""

from bayescompress.cli import run

run()
