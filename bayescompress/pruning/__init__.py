"""Posterior statistics -> masks -> structure -> a physically smaller network."""

from bayescompress.pruning.export import export_sequential
from bayescompress.pruning.graph_export import export_with_torch_pruning, to_plain_network
from bayescompress.pruning.masks import Masks, prunable_layers, reset_optimizer_state_
from bayescompress.pruning.strategies import InclusionPruning, KeepMasks, MagnitudePruning, PruningStrategy, SNRPruning
from bayescompress.pruning.structure import Structure, UnsupportedGraphError, propagate, sequential_chain
from bayescompress.pruning.validated import keep_top_weights, masked_accuracy, prune_within_units

__all__ = [
    "InclusionPruning",
    "KeepMasks",
    "MagnitudePruning",
    "Masks",
    "PruningStrategy",
    "SNRPruning",
    "Structure",
    "UnsupportedGraphError",
    "export_sequential",
    "export_with_torch_pruning",
    "keep_top_weights",
    "masked_accuracy",
    "propagate",
    "prunable_layers",
    "prune_within_units",
    "reset_optimizer_state_",
    "sequential_chain",
    "to_plain_network",
]
