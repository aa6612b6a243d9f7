"""The small interface every prior family implements.

A prior is attached to exactly one Bayesian layer (as its ``prior`` submodule), so its hyperparameters are
buffers that travel in the layer's ``state_dict``. Methods receive the layer rather than keeping a reference
to it, which avoids a module cycle.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from bayescompress.nn.layers import BayesianLayer


class Prior(nn.Module, abc.ABC):
    """Base class of the priors over one layer's weights and bias.

    Subclasses implement :meth:`kl`; :meth:`update` (closed-form steps between SGD phases) and
    :meth:`statistics` (posterior summaries used by pruning) have sensible defaults.
    """

    @abc.abstractmethod
    def kl(self, layer: BayesianLayer) -> Tensor:
        """KL(q || p) summed over the layer's un-pruned weights and bias (a scalar tensor)."""

    def update(self, layer: BayesianLayer) -> None:
        """Closed-form updates of variational or hyper-parameters; a no-op unless the family has any."""

    @torch.no_grad()
    def statistics(self, layer: BayesianLayer) -> dict[str, Tensor]:
        """Per-weight posterior summaries: mean, standard deviation and signal-to-noise ratio |mu|/sigma."""
        mu, sigma = layer.weight, layer.weight_sigma
        return {"mean": mu.detach().clone(), "std": sigma.clone(), "snr": mu.abs() / sigma.clamp_min(1e-12)}


def masked_sum(values: Tensor, keep: Tensor | None) -> Tensor:
    """Sum of ``values`` over the entries ``keep`` marks (all entries when ``keep`` is None).

    ``torch.where`` rather than a product, so a pruned entry whose term is inf or nan contributes nothing.
    """
    if keep is None:
        return values.sum()
    return torch.where(keep.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
