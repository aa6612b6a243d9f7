"""The three-layer hierarchical prior of Turbo-VBI (Xia, Tsang and Lau 2023; SPEC section 2).

Per weight n of a layer (weights as the grid W of shape (out, fan_in), a conv filter flattened into its row):

    support      s_n in {0, 1}, jointly a binary Markov random field on the grid (rows and columns);
    precision    gamma_n | s_n ~ Gamma(a, b) if active, Gamma(a_bar, b_bar) if inactive (shape, rate);
    weight       w_n | gamma_n ~ N(0, 1 / gamma_n).

With ``support="kernel"`` a convolution's support is coarser: one s_g per kernel slice g = (filter, input
channel), shared by its kh*kw weights, on the grid (filters, input channels). A row chain then clusters the
live slices of a filter (a filter whose row goes inactive is removed), a column chain the slices that read
one input channel (a channel inactive down its column is removed from every filter): structure a conv layer
can physically lose. Each weight keeps its own precision.

The active state is a wide slab (E[gamma] = a/b small), the inactive one a narrow spike. The variational
family is q(w_n) q(gamma_n) q(s_n) = N(mu_n, sigma_n^2) Gamma(a~_n, b~_n) Bernoulli(pi~_n); this module keeps
q(gamma), q(s) and the prior message pi_n from the MRF as buffers, and holds the closed-form mathematics
of module A (:func:`module_a_`: the q(gamma) and q(s) updates, the evidence sent to module B) and the expected
KL the SGD steps minimise. :mod:`bayescompress.inference.turbo` orchestrates them with the message passing
on the support's MRF (:mod:`bayescompress.priors.mrf`, module B).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bayescompress._validation import check_choice, check_positive, check_probability
from bayescompress.priors.base import Inclusion, Prior
from bayescompress.priors.kl import kl_normal_normal_sum
from bayescompress.priors.mrf import FactorGraph, TransitionPotential

GRAPHS = ("grid", "rows", "columns", "independent")
SUPPORTS = ("weight", "kernel")
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
    support:
        ``"weight"`` (one support variable per weight, the default) or ``"kernel"`` (one per kernel slice
        (filter, input channel) of a convolution, on the grid (filters, input channels); a linear layer's
        slice is one weight, so it is unaffected).
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
        support: str = "weight",
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
        check_choice("support", support, SUPPORTS)
        check_positive("bias_scale", bias_scale)
        if active_rate is not None and inactive_rate is not None:
            _check_narrower(active_shape, active_rate, inactive_shape, inactive_rate)
        self.graph = graph
        self.support = support
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
        weight = layer.weight.detach()
        variance = float(weight.var()) if weight.numel() > 1 else float(weight.pow(2).mean())
        variance = max(variance, 1e-12)
        active_rate, inactive_rate = self._rates
        self.active_rate.fill_(active_rate if active_rate is not None else variance)
        self.inactive_rate.fill_(inactive_rate if inactive_rate is not None else _INACTIVE_RATE_FACTOR * variance)
        _check_narrower(float(self.active_shape), float(self.active_rate), float(self.inactive_shape),
                        float(self.inactive_rate))
        grid = weight.reshape(weight.shape[0], -1)
        # weights per support variable: a kernel slice's kh*kw, or 1
        self.slice_size = weight[0, 0].numel() if self.support == "kernel" and weight.dim() > 2 else 1
        support_shape = (grid.shape[0], grid.shape[1] // self.slice_size)
        logit_pi0 = math.log(float(self.pi0)) - math.log1p(-float(self.pi0))
        # q(s) and the MRF's message pi per support variable; q(gamma) and the moments the SGD steps read per weight
        self.register_buffer("prior_logit", grid.new_full(support_shape, logit_pi0))
        self.register_buffer("inclusion_logit", grid.new_full(support_shape, logit_pi0))
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
        """The row and column :class:`~bayescompress.priors.mrf.TransitionPotential`."""
        (rp11, rp01), (cp11, cp01) = self.transitions.tolist()
        return TransitionPotential(rp11, rp01), TransitionPotential(cp11, cp01)

    def per_weight(self, support: Tensor) -> Tensor:
        """A tensor over the support grid repeated onto the weight grid (out, fan_in)."""
        if self.slice_size == 1:
            return support
        return support.unsqueeze(-1).expand(*support.shape, self.slice_size).reshape(support.shape[0], -1)

    def per_support(self, weights: Tensor) -> Tensor:
        """A tensor over the weight grid (out, fan_in) summed over each support variable's weights."""
        if self.slice_size == 1:
            return weights
        return weights.reshape(weights.shape[0], -1, self.slice_size).sum(-1)

    def factor_graph(self, shape):
        """The support's factor graph on a grid of ``shape`` (out, fan_in), or (filters, input channels) with
        kernel support, as ``graph`` says."""
        rows, columns = self.potentials()
        if self.graph == "independent":
            return FactorGraph.independent(shape)
        return FactorGraph.grid(shape, rows=rows if self.graph in ("grid", "rows") else None,
                                columns=columns if self.graph in ("grid", "columns") else None)

    def kl(self, layer) -> Tensor:
        keep = layer.weight_keep
        total = expected_kl_sum(layer.weight, layer.weight_sigma, self.expected_precision.view_as(layer.weight),
                                self.expected_log_precision.view_as(layer.weight), keep)
        if layer.bias is not None:
            total = total + kl_normal_normal_sum(layer.bias, layer.bias_sigma, self.bias_scale)
        return total

    @torch.no_grad()
    def inclusion(self, layer) -> Inclusion:
        """Per weight: pi~, the posterior probability that its support is active."""
        return Inclusion(weight=torch.sigmoid(self.per_weight(self.inclusion_logit)).view_as(layer.weight).clone())

    @torch.no_grad()
    def statistics(self, layer) -> dict[str, Tensor]:
        """Base statistics plus, shaped like the weight: ``inclusion`` (pi~), ``prior_inclusion`` (the MRF's
        message pi) and ``expected_precision`` (E[gamma]); per unit, ``unit_active_fraction``."""
        stats = super().statistics(layer)
        inclusion = self.inclusion(layer).weight
        stats.update(
            inclusion=inclusion,
            prior_inclusion=torch.sigmoid(self.per_weight(self.prior_logit)).view_as(layer.weight),
            expected_precision=self.expected_precision.view_as(layer.weight).clone(),
            unit_active_fraction=(inclusion >= 0.5).flatten(1).float().mean(dim=1),
        )
        return stats

    def extra_repr(self) -> str:
        a, b, a_bar, b_bar = self.gamma_parameters()
        (rp11, rp01), (cp11, cp01) = self.transitions.tolist()
        return (f"active=Gamma({a:g}, {b:.3g}), inactive=Gamma({a_bar:g}, {b_bar:.3g}), pi0={float(self.pi0):g}, "
                f"rows=({rp11:g}, {rp01:g}), columns=({cp11:g}, {cp01:g}), graph={self.graph}, support={self.support}")


class _ExpectedKLSum(torch.autograd.Function):
    """sum_n 1/2 (E[gamma_n](mu_n^2 + sigma_n^2) - 2 log sigma_n - 1) over kept weights, with its gradients
    dKL/dmu = E[gamma] mu and dKL/dsigma = E[gamma] sigma - 1/sigma written out (it runs every step)."""

    @staticmethod
    def forward(ctx, mu: Tensor, sigma: Tensor, precision: Tensor, keep: Tensor | None) -> Tensor:
        if keep is not None:
            kept = keep.bool()
            mu, precision = torch.where(kept, mu, 0.0), torch.where(kept, precision, 0.0)
            log_sigma = torch.log(torch.where(kept, sigma, 1.0))
            count = kept.sum().to(mu.dtype)
        else:
            log_sigma, count = torch.log(sigma), torch.tensor(float(mu.numel()), dtype=mu.dtype)
        second_moment = torch.addcmul(mu * mu, sigma, sigma)
        ctx.save_for_backward(mu, sigma, precision, keep)
        return 0.5 * (torch.dot(precision.reshape(-1), second_moment.reshape(-1)) - 2.0 * log_sigma.sum() - count)

    @staticmethod
    def backward(ctx, grad: Tensor):
        mu, sigma, precision, keep = ctx.saved_tensors
        grad_mu = grad * precision * mu
        grad_sigma = torch.mul(precision, sigma).sub_(sigma.reciprocal())
        if keep is not None:
            grad_sigma = torch.where(keep.bool(), grad_sigma, 0.0)
        return grad_mu, grad * grad_sigma, None, None


def expected_kl_sum(mu: Tensor, sigma: Tensor, expected_precision: Tensor, expected_log_precision: Tensor,
                    keep: Tensor | None = None) -> Tensor:
    """sum_n E_q(gamma)[KL(N(mu_n, sigma_n^2) || N(0, 1/gamma_n))] over the weights ``keep`` marks:
    1/2 (E[gamma](mu^2 + sigma^2) - E[log gamma] - log sigma^2 - 1). Differentiable in mu and sigma."""
    log_term = expected_log_precision if keep is None else torch.where(keep.bool(), expected_log_precision, 0.0)
    return _ExpectedKLSum.apply(mu, sigma, expected_precision, keep) - 0.5 * log_term.sum()


def update_precision(inclusion: Tensor, second_moment: Tensor, gamma: tuple[float, float, float, float]
                     ) -> tuple[Tensor, Tensor]:
    """q(gamma) = Gamma(a~, b~): a~ = pi~ a + (1 - pi~) a_bar + 1/2, b~ = pi~ b + (1 - pi~) b_bar + E[w^2]/2."""
    a, b, a_bar, b_bar = gamma
    shape = inclusion * (a - a_bar) + (a_bar + 0.5)
    rate = inclusion * (b - b_bar) + b_bar + 0.5 * second_moment
    return shape, rate


def support_log_odds(shape: Tensor, rate: Tensor, gamma: tuple[float, float, float, float]) -> Tensor:
    """E_q(gamma)[log Gamma(gamma; a, b)] - E_q(gamma)[log Gamma(gamma; a_bar, b_bar)]: the evidence q(gamma)
    gives for s = 1 over s = 0."""
    a, b, a_bar, b_bar = gamma
    mean, mean_log = shape / rate, torch.digamma(shape) - torch.log(rate)
    active = a * math.log(b) - math.lgamma(a) + (a - 1) * mean_log - b * mean
    inactive = a_bar * math.log(b_bar) - math.lgamma(a_bar) + (a_bar - 1) * mean_log - b_bar * mean
    return active - inactive


def support_log_bayes_factor(second_moment: Tensor, gamma: tuple[float, float, float, float]) -> Tensor:
    """log p(w | s = 1) - log p(w | s = 0) with the precision integrated out, w^2 replaced by E[w^2].

    w | s is then a Student-t with 2a degrees of freedom and scale sqrt(b / a) (a_bar, b_bar when inactive):
    log p(w | a, b) = a log b + lgamma(a + 1/2) - lgamma(a) - log(2 pi)/2 - (a + 1/2) log(b + w^2 / 2).
    """
    a, b, a_bar, b_bar = gamma

    def log_marginal(shape: float, rate: float) -> Tensor:
        constant = shape * math.log(rate) + math.lgamma(shape + 0.5) - math.lgamma(shape)
        return constant - (shape + 0.5) * torch.log(second_moment * 0.5 + rate)

    return log_marginal(a, b) - log_marginal(a_bar, b_bar)


def _set_precision_(prior, inclusion: Tensor, second_moment: Tensor) -> None:
    shape, rate = update_precision(inclusion, second_moment, prior.gamma_parameters())
    prior.precision_shape.copy_(shape)
    prior.precision_rate.copy_(rate)
    prior.expected_precision.copy_(shape / rate)
    prior.expected_log_precision.copy_(torch.digamma(shape) - torch.log(rate))


@torch.no_grad()
def module_a_(prior, layer) -> Tensor:
    """Module A's closed-form step for one layer; returns the extrinsic log-odds for module B.

    One coordinate-ascent sweep started from the prior message (q(s) = pi): q(gamma), then q(s)
    (``logit pi~ = logit pi + support_log_odds``), then q(gamma) again so the SGD steps use the decided
    state. Starting from pi rather than from the previous pi~ matters: q(gamma) carries the evidence of a
    single weight (shape + 1/2), so a q(gamma) fitted to s = 1 always favours s = 1 again and the
    decision could never be revised as the weight shrinks.

    A support variable shared by a kernel slice gets instead the sum of its weights' Bayes factors with the
    precision integrated out (:func:`support_log_bayes_factor`). The mean-field evidence above is unbounded
    below as E[w^2] -> 0 (q(gamma) fitted under a small pi puts E[gamma] near 1/E[w^2]), so summed over a
    slice it would let the slice's smallest weight decide; each Bayes factor is bounded.
    """
    second_moment = (layer.weight.detach() ** 2 + layer.weight_sigma.detach() ** 2).reshape_as(prior.precision_shape)
    if prior.slice_size > 1:
        extrinsic = prior.per_support(support_log_bayes_factor(second_moment, prior.gamma_parameters()))
    else:
        _set_precision_(prior, torch.sigmoid(prior.prior_logit), second_moment)
        extrinsic = support_log_odds(prior.precision_shape, prior.precision_rate, prior.gamma_parameters())
    prior.inclusion_logit.copy_(prior.prior_logit + extrinsic)
    _set_precision_(prior, torch.sigmoid(prior.per_weight(prior.inclusion_logit)), second_moment)
    return extrinsic


def _check_narrower(a: float, b: float, a_bar: float, b_bar: float) -> None:
    if not a_bar / b_bar > a / b:
        raise ValueError(
            f"the inactive state must be narrower than the active one (larger mean precision): "
            f"a_bar/b_bar = {a_bar / b_bar:.4g} is not above a/b = {a / b:.4g}; lower inactive_rate or raise "
            "inactive_shape")


__all__ = ["GRAPHS", "SUPPORTS", "HierarchicalPrior", "expected_kl_sum", "module_a_", "support_log_bayes_factor", "support_log_odds", "update_precision"]
