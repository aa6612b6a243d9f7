"""The three-layer hierarchical prior of Turbo-VBI (Xia, Tsang and Lau 2023; SPEC section 2).

Per weight n of a layer (weights as the grid W of shape (out, fan_in), a conv filter flattened into its row):

    support      s_n in {0, 1}, jointly a binary Markov random field on the grid (rows and columns);
    precision    gamma_n | s_n ~ Gamma(a, b) if active, Gamma(a_bar, b_bar) if inactive (shape, rate);
    weight       w_n | gamma_n ~ N(0, 1 / gamma_n).

The active state is a wide slab (E[gamma] = a/b small), the inactive one a narrow spike. The variational
family is q(w_n) q(gamma_n) q(s_n) = N(mu_n, sigma_n^2) Gamma(a~_n, b~_n) Bernoulli(pi~_n); this module keeps
q(gamma), q(s) and the prior message pi_n from the MRF as buffers, and
:mod:`bayescompress.inference.turbo` updates them (module A) and runs the message passing (module B).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bayescompress._validation import check_choice, check_positive, check_probability
from bayescompress.priors.base import Prior
from bayescompress.priors.kl import kl_normal_normal_sum

GRAPHS = ("grid", "rows", "columns", "independent")
# Scale-aware defaults (SPEC section 2): b = v_l and b_bar = 1e-4 v_l with v_l the layer's weight variance,
# so the slab's standard deviation is about the layer's weight scale and the spike's about 1 % of it.
_INACTIVE_RATE_FACTOR = 1e-4



class HierarchicalPrior(Prior):
    """Support (MRF) -> Gamma precision -> Gaussian weight, per layer.

    Parameters
    ----------
    active_shape, active_rate:
        a, b of the active state's Gamma(a, b) precision. ``active_rate=None``: the variance of the
        layer's pretrained weights (scale-aware default).
    inactive_shape, inactive_rate:
        a_bar, b_bar of the inactive state. ``inactive_rate=None``: 1e-4 times that variance. The inactive
        state must be narrower: a_bar / b_bar > a / b.
    pi0:
        The MRF's unary prior probability that a weight is active, in (0, 1). Smaller prunes more.
    row_p11, row_p01:
        P(s' = 1 | s = 1) and P(s' = 1 | s = 0) along a row (one unit's incoming weights), in (0, 1);
        p11 > p01 clusters active weights inside a neuron or filter.
    column_p11, column_p01:
        The same down a column (one input across all units); clusters make whole inputs die together.
    graph:
        ``"grid"`` (rows and columns, the default), ``"rows"`` (a chain per unit), ``"columns"`` (a chain
        per input) or ``"independent"`` (no MRF: each weight's support on its own).
    bias_scale:
        Standard deviation of the Gaussian prior on the bias, which the hierarchy does not cover (> 0).

    Example
    -------
    >>> from bayescompress.nn import BayesLinear
    >>> layer = BayesLinear(6, 4, prior=HierarchicalPrior(pi0=0.2))
    >>> sorted(layer.prior.statistics(layer))[:3]
    ['expected_precision', 'inclusion', 'mean']
    """

    def __init__(
        self,
        *,
        active_shape: float = 1.0,
        active_rate: float | None = None,
        inactive_shape: float = 1.0,
        inactive_rate: float | None = None,
        pi0: float = 0.01,
        row_p11: float = 0.7,
        row_p01: float = 0.3,
        column_p11: float = 0.7,
        column_p01: float = 0.3,
        graph: str = "grid",
        bias_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check_positive("active_shape", active_shape)
        check_positive("inactive_shape", inactive_shape)
        for name, value in (("active_rate", active_rate), ("inactive_rate", inactive_rate)):
            if value is not None:
                check_positive(name, value)
        for name, value in (("pi0", pi0), ("row_p11", row_p11), ("row_p01", row_p01), ("column_p11", column_p11),
                            ("column_p01", column_p01)):
            check_probability(name, value)
        check_choice("graph", graph, GRAPHS)
        check_positive("bias_scale", bias_scale)
        if active_rate is not None and inactive_rate is not None:
            _check_narrower(active_shape, active_rate, inactive_shape, inactive_rate)
        self.graph = graph
        self._rates = (active_rate, inactive_rate)
        self.register_buffer("active_shape", torch.tensor(float(active_shape)))
        self.register_buffer("inactive_shape", torch.tensor(float(inactive_shape)))
        self.register_buffer("active_rate", torch.tensor(float(active_rate or math.nan)))
        self.register_buffer("inactive_rate", torch.tensor(float(inactive_rate or math.nan)))
        # float64: a probability like 1 - 1e-9 would round to 1 in float32
        self.register_buffer("pi0", torch.tensor(float(pi0), dtype=torch.float64))
        self.register_buffer("transitions", torch.tensor([[row_p11, row_p01], [column_p11, column_p01]],
                                                         dtype=torch.float64))
        self.register_buffer("bias_scale", torch.tensor(float(bias_scale)))

    def attach(self, layer) -> None:
        from bayescompress.inference.turbo import module_a_

        weight = layer.weight.detach()
        variance = float(weight.var()) if weight.numel() > 1 else float(weight.pow(2).mean())
        variance = max(variance, 1e-12)
        active_rate, inactive_rate = self._rates
        self.active_rate.fill_(active_rate if active_rate is not None else variance)
        self.inactive_rate.fill_(inactive_rate if inactive_rate is not None else _INACTIVE_RATE_FACTOR * variance)
        _check_narrower(float(self.active_shape), float(self.active_rate), float(self.inactive_shape),
                        float(self.inactive_rate))
        grid = weight.reshape(weight.shape[0], -1)
        logit_pi0 = math.log(float(self.pi0)) - math.log1p(-float(self.pi0))
        # q(s), q(gamma), the MRF's message pi and the moments the SGD steps read, all per weight
        self.register_buffer("prior_logit", torch.full_like(grid, logit_pi0))
        self.register_buffer("inclusion_logit", torch.full_like(grid, logit_pi0))
        self.register_buffer("precision_shape", torch.ones_like(grid))
        self.register_buffer("precision_rate", torch.ones_like(grid))
        self.register_buffer("expected_precision", torch.ones_like(grid))
        self.register_buffer("expected_log_precision", torch.zeros_like(grid))
        module_a_(self, layer)  # q(gamma), q(s) under the unary prior pi0 until module B has run

    def gamma_parameters(self) -> tuple[float, float, float, float]:
        """(a, b, a_bar, b_bar)."""
        return (float(self.active_shape), float(self.active_rate), float(self.inactive_shape),
                float(self.inactive_rate))

    def potentials(self):
        """The row and column :class:`~bayescompress.inference.message_passing.TransitionPotential`."""
        from bayescompress.inference.message_passing import TransitionPotential

        (rp11, rp01), (cp11, cp01) = self.transitions.tolist()
        return TransitionPotential(rp11, rp01), TransitionPotential(cp11, cp01)

    def factor_graph(self, shape):
        """The support's factor graph on a grid of ``shape`` (out, fan_in), as ``graph`` says."""
        from bayescompress.inference.message_passing import FactorGraph

        rows, columns = self.potentials()
        if self.graph == "independent":
            return FactorGraph.independent(shape)
        return FactorGraph.grid(shape, rows=rows if self.graph in ("grid", "rows") else None,
                                columns=columns if self.graph in ("grid", "columns") else None)

    def kl(self, layer) -> Tensor:
        from bayescompress.inference.turbo import expected_kl_sum

        keep = layer.weight_keep
        total = expected_kl_sum(layer.weight, layer.weight_sigma, self.expected_precision.view_as(layer.weight),
                                self.expected_log_precision.view_as(layer.weight), keep)
        if layer.bias is not None:
            total = total + kl_normal_normal_sum(layer.bias, layer.bias_sigma, self.bias_scale)
        return total

    @torch.no_grad()
    def statistics(self, layer) -> dict[str, Tensor]:
        """Base statistics plus, shaped like the weight: ``inclusion`` (pi~), ``prior_inclusion`` (the MRF's
        message pi) and ``expected_precision`` (E[gamma]); per unit, ``unit_active_fraction``."""
        stats = super().statistics(layer)
        inclusion = torch.sigmoid(self.inclusion_logit)
        stats.update(
            inclusion=inclusion.view_as(layer.weight).clone(),
            prior_inclusion=torch.sigmoid(self.prior_logit).view_as(layer.weight),
            expected_precision=self.expected_precision.view_as(layer.weight).clone(),
            unit_active_fraction=(inclusion >= 0.5).float().mean(dim=1),
        )
        return stats

    def extra_repr(self) -> str:
        a, b, a_bar, b_bar = self.gamma_parameters()
        (rp11, rp01), (cp11, cp01) = self.transitions.tolist()
        return (f"active=Gamma({a:g}, {b:.3g}), inactive=Gamma({a_bar:g}, {b_bar:.3g}), pi0={float(self.pi0):g}, "
                f"rows=({rp11:g}, {rp01:g}), columns=({cp11:g}, {cp01:g}), graph={self.graph}")


def _check_narrower(a: float, b: float, a_bar: float, b_bar: float) -> None:
    if not a_bar / b_bar > a / b:
        raise ValueError(
            f"the inactive state must be narrower than the active one (larger mean precision): "
            f"a_bar/b_bar = {a_bar / b_bar:.4g} is not above a/b = {a / b:.4g}; lower inactive_rate or raise "
            "inactive_shape")


__all__ = ["GRAPHS", "HierarchicalPrior"]
