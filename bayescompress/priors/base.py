"""The small interface every prior family implements.

A prior is attached to exactly one Bayesian layer (as its ``prior`` submodule), so its hyperparameters are
buffers that travel in the layer's ``state_dict``. Methods receive the layer rather than keeping a reference
to it, which avoids a module cycle.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from bayescompress.nn.layers import BayesianLayer


@dataclass(frozen=True)
class Inclusion:
    """A layer's posterior inclusion probabilities, the summaries pruning thresholds; None where the prior has
    no such variable.

    ``weight``: P(weight on), shaped like the weight (Turbo-VBI's pi~). ``unit``: P(output unit on), one per
    neuron or filter (spike-and-slab gates g_j). ``input``: P(input feature or channel on), one per input
    (spike-and-slab input gates).
    """

    weight: Tensor | None = None
    unit: Tensor | None = None
    input: Tensor | None = None


class Prior(nn.Module, abc.ABC):
    """Base class of the priors over one layer's weights and bias.

    Subclasses implement :meth:`kl`; :meth:`update` (closed-form steps between SGD phases) and
    :meth:`inclusion` (the posterior inclusion probabilities pruning thresholds) and :meth:`statistics`
    (diagnostic summaries) have sensible defaults. Families with
    per-unit latent variables (spike-and-slab gates and scales) also override :meth:`attach`, which creates
    their layer-shaped variational parameters, and :meth:`unit_multiplier` / :meth:`input_multiplier`,
    through which those variables act on the layer's output units and input channels.
    """

    def attach(self, layer: BayesianLayer) -> None:
        """Called once when the prior is attached to ``layer`` (whose posterior is already set up).

        A family that re-expresses the weights (e.g. w = s * beta) creates its parameters here and rescales
        the posterior with ``layer.scale_posterior_`` so the layer still computes the same function.
        """

    def for_position(self, first: bool, last: bool) -> Prior:
        """The prior to use for a layer at this place in the network (the output layer may differ)."""
        return self

    def unit_multiplier(self, layer: BayesianLayer, sample: bool) -> Tensor | None:
        """Per-output-unit factor on the layer's output (a sample when ``sample``, else a point value)."""
        return None

    def input_multiplier(self, layer: BayesianLayer, sample: bool) -> Tensor | None:
        """Per-input-channel factor on the layer's input (a sample when ``sample``, else a point value)."""
        return None

    def sampled_weight_mean(self, layer: BayesianLayer) -> Tensor:
        """The weight mean the sampled (training and Monte-Carlo) passes use: the posterior mean itself unless
        the family says otherwise."""
        return layer.weight

    @abc.abstractmethod
    def kl(self, layer: BayesianLayer) -> Tensor:
        """KL(q || p) summed over the layer's un-pruned weights and bias (a scalar tensor)."""

    def update(self, layer: BayesianLayer) -> None:
        """Closed-form updates of variational or hyper-parameters; a no-op unless the family has any."""

    def inclusion(self, layer: BayesianLayer) -> Inclusion:
        """The posterior inclusion probabilities of ``layer``'s weights, units and inputs (none by default: a
        prior without support variables says nothing about what is on)."""
        return Inclusion()

    @torch.no_grad()
    def statistics(self, layer: BayesianLayer) -> dict[str, Tensor]:
        """Per-weight posterior diagnostics: mean, standard deviation and signal-to-noise ratio |mu|/sigma."""
        mu, sigma = layer.weight, layer.weight_sigma
        return {"mean": mu.detach().clone(), "std": sigma.clone(), "snr": mu.abs() / sigma.clamp_min(1e-12)}


def masked_sum(values: Tensor, keep: Tensor | None) -> Tensor:
    """Sum of ``values`` over the entries ``keep`` marks (all entries when ``keep`` is None).

    ``torch.where`` rather than a product, so a pruned entry whose term is inf or nan contributes nothing.
    """
    if keep is None:
        return values.sum()
    return torch.where(keep.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
