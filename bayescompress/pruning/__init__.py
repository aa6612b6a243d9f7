"""Posterior statistics -> masks -> structure -> a physically smaller network."""

from bayescompress.pruning.export import export_sequential
from bayescompress.pruning.masks import Masks, prunable_layers
from bayescompress.pruning.strategies import InclusionPruning, MagnitudePruning, PruningStrategy, SNRPruning
from bayescompress.pruning.structure import Structure, UnsupportedGraphError, propagate, sequential_chain

__all__ = [
    "InclusionPruning",
    "MagnitudePruning",
    "Masks",
    "PruningStrategy",
    "SNRPruning",
    "Structure",
    "UnsupportedGraphError",
    "export_sequential",
    "propagate",
    "prunable_layers",
    "sequential_chain",
]
