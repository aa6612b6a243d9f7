"""Turbo-VBI (Xia, Tsang and Lau 2023; SPEC section 2): module A, module B, and the callback that alternates them.

Module A (variational Bayesian inference) owns q(w), q(gamma) and q(s). The SGD steps of the training loop
update q(w) against the expected KL :func:`expected_kl_sum`; between them, :func:`module_a_` makes the
closed-form coordinate-ascent updates of q(gamma) and q(s) given the prior message pi from module B, and
sends module B the extrinsic log-odds ``logit pi~ - logit pi``. Module B (:func:`module_b`) multiplies that
evidence into the MRF's unary factors, runs loopy BP on the support's factor graph, and returns as the new
prior message the belief divided by the evidence, ``belief - extrinsic`` in log-odds.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from bayescompress._validation import check_in_range, check_positive_int
from bayescompress.inference.message_passing import (
    BeliefPropagationWarning,
    BPResult,
    FactorGraph,
    belief_propagation,
    evidence_stability,
)
from bayescompress.inference.train import Callback, Trainer
from bayescompress.nn.model import bayesian_layers

# Linearised BP gains above this at the evidence-only state mean the couplings can overrule the evidence
# (on 4x4 grids, gains of 0.94-1.2 went with marginal errors up to 0.5; 0.6-0.84 with at most 0.08).
WEAK_EVIDENCE_GAIN = 0.9


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
    """
    second_moment = (layer.weight.detach() ** 2 + layer.weight_sigma.detach() ** 2).reshape_as(prior.prior_logit)
    _set_precision_(prior, torch.sigmoid(prior.prior_logit), second_moment)
    extrinsic = support_log_odds(prior.precision_shape, prior.precision_rate, prior.gamma_parameters())
    prior.inclusion_logit.copy_(prior.prior_logit + extrinsic)
    _set_precision_(prior, torch.sigmoid(prior.inclusion_logit), second_moment)
    return extrinsic


def module_b(graph: FactorGraph, logit_pi0: float, extrinsic: Tensor, *, check_evidence: bool = True,
             name: str = "layer", **bp) -> tuple[Tensor, BPResult]:
    """Module B: loopy BP on ``graph`` with unary log-odds ``logit pi0 + extrinsic`` (phi0 times module A's
    evidence). Returns the message to module A, ``logit pi0 + sum of incoming messages`` (= belief - extrinsic,
    i.e. belief / evidence), and the :class:`BPResult`.

    With ``check_evidence``, warns (:class:`BeliefPropagationWarning`) when the couplings outweigh the evidence
    (:func:`evidence_stability` above ``WEAK_EVIDENCE_GAIN``): there the exact posterior can be bimodal and BP
    reports one mode. ``bp`` goes to :func:`belief_propagation` (damping, tol, max_iter, messages).
    """
    unary = extrinsic + logit_pi0
    if check_evidence and graph.families:
        gain = evidence_stability(graph, unary)
        if gain > WEAK_EVIDENCE_GAIN:
            warnings.warn(
                f"{name}: the MRF couplings outweigh the evidence (linearised BP gain {gain:.2f} > "
                f"{WEAK_EVIDENCE_GAIN}); loopy BP may lock onto one mode of the support posterior. Weaken the "
                "couplings (p11 and p01 closer together) or train longer before pruning",
                BeliefPropagationWarning, stacklevel=2)
    result = belief_propagation(graph, unary, name=name, **bp)
    return result.incoming + logit_pi0, result


class TurboCallback(Callback):
    """Runs Turbo-VBI iterations inside :func:`~bayescompress.inference.fit` for every layer whose prior is a
    :class:`~bayescompress.priors.HierarchicalPrior`.

    One turbo iteration per layer: module A (q(gamma), q(s) given pi) -> extrinsic -> module B (loopy BP)
    -> new pi. It runs before training (so the first SGD steps see an informed E[gamma]),
    ``updates_per_epoch`` times per epoch, and module A once more at the end so pi~ reflects the last
    message. BP warm-starts from the layer's previous messages. Each epoch's record gains
    ``turbo/<layer>/active`` (fraction with pi~ >= 1/2) and ``turbo/<layer>/bp_iterations``.

    Parameters
    ----------
    updates_per_epoch: turbo iterations per epoch, evenly spaced in batches (>= 1).
    damping, tol, max_iter: loopy BP's settings (:func:`belief_propagation`).

    Example
    -------
    >>> from bayescompress.inference import fit, TrainConfig        # doctest: +SKIP
    >>> fit(net, train, val, TrainConfig(epochs=5), callbacks=[TurboCallback()])   # doctest: +SKIP
    """

    def __init__(self, updates_per_epoch: int = 1, damping: float = 0.5, tol: float = 1e-4, max_iter: int = 100):
        check_positive_int("updates_per_epoch", updates_per_epoch)
        check_in_range("damping", damping, 0.0, 1.0, high_inclusive=False)
        check_in_range("tol", tol, 0.0, low_inclusive=False)
        check_positive_int("max_iter", max_iter)
        self.updates_per_epoch = updates_per_epoch
        self.bp = dict(damping=damping, tol=tol, max_iter=max_iter)
        self._graphs: dict[str, FactorGraph] = {}
        self._messages: dict[str, tuple] = {}
        self._bp_iterations: dict[str, int] = {}
        self._checked: set[str] = set()

    @staticmethod
    def turbo_layers(model: nn.Module):
        from bayescompress.priors.hierarchical import HierarchicalPrior

        return [(name, layer) for name, layer in bayesian_layers(model) if isinstance(layer.prior, HierarchicalPrior)]

    @torch.no_grad()
    def iterate(self, model: nn.Module) -> None:
        """One turbo iteration (module A, then module B) on every hierarchical-prior layer of ``model``."""
        for name, layer in self.turbo_layers(model):
            prior = layer.prior
            extrinsic = module_a_(prior, layer)
            if name not in self._graphs:
                self._graphs[name] = prior.factor_graph(prior.prior_logit.shape)
            graph = self._graphs[name]
            pi0 = float(prior.pi0)
            message, result = module_b(graph, math.log(pi0) - math.log1p(-pi0), extrinsic,
                                       check_evidence=name not in self._checked, name=f"layer {name!r}",
                                       messages=self._messages.get(name), **self.bp)
            self._checked.add(name)  # once per layer, at its first iteration: one warning, not one per epoch
            prior.prior_logit.copy_(message)
            self._messages[name] = result.messages
            self._bp_iterations[name] = result.iterations

    def on_train_begin(self, trainer: Trainer) -> None:
        layers = self.turbo_layers(trainer.model)
        if not layers:
            raise ValueError("TurboCallback found no layer with a HierarchicalPrior; convert the model with "
                             "bayesianize_(model, HierarchicalPrior()) first")
        if self.updates_per_epoch > trainer.steps_per_epoch:
            warnings.warn(f"updates_per_epoch={self.updates_per_epoch} exceeds the {trainer.steps_per_epoch} batches "
                          "of an epoch: one turbo iteration per batch will run instead", stacklevel=2)
        self._interval = max(1, trainer.steps_per_epoch // self.updates_per_epoch)
        # a fresh start per fit: graphs, warm-start messages and the evidence check belong to one model
        for cache in (self._graphs, self._messages, self._bp_iterations, self._checked):
            cache.clear()
        self.iterate(trainer.model)

    def on_batch_end(self, trainer: Trainer, batch: int, loss: float) -> None:
        if (batch + 1) % self._interval == 0 and (batch + 1) // self._interval <= self.updates_per_epoch:
            self.iterate(trainer.model)

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, float]) -> None:
        for name, layer in self.turbo_layers(trainer.model):
            record[f"turbo/{name}/active"] = float((layer.prior.inclusion_logit >= 0).float().mean())
            record[f"turbo/{name}/bp_iterations"] = float(self._bp_iterations.get(name, 0))

    @torch.no_grad()
    def on_train_end(self, trainer: Trainer) -> None:
        for _, layer in self.turbo_layers(trainer.model):
            module_a_(layer.prior, layer)


__all__ = ["TurboCallback", "WEAK_EVIDENCE_GAIN", "expected_kl_sum", "module_a_", "module_b", "support_log_odds",
           "update_precision", "BeliefPropagationWarning"]
