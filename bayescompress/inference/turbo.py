"""Turbo-VBI (Xia, Tsang and Lau 2023; SPEC section 2): the callback that alternates module A and module B.

Module A (variational Bayesian inference) owns q(w), q(gamma) and q(s). The SGD steps of the training loop
update q(w) against the prior's expected KL; between them, module A
(:func:`~bayescompress.priors.hierarchical.module_a_`, the prior's own closed-form mathematics) updates q(gamma)
and q(s) given the prior message pi from module B, and sends module B the extrinsic log-odds
``logit pi~ - logit pi``. Module B (:func:`module_b`) multiplies that
evidence into the MRF's unary factors, runs loopy BP on the support's factor graph, and returns as the new
prior message the belief divided by the evidence, ``belief - extrinsic`` in log-odds.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from bayescompress._validation import check_in_range, check_positive_int
from bayescompress.inference.train import Callback, Trainer
from bayescompress.nn.model import bayesian_layers
from bayescompress.priors.hierarchical import HierarchicalPrior, module_a_
from bayescompress.priors.mrf import (
    BeliefPropagationWarning,
    BPResult,
    FactorGraph,
    belief_propagation,
    evidence_stability,
)

# Linearised BP gains above this at the evidence-only state mean the couplings can overrule the evidence
# (on 4x4 grids, gains of 0.94-1.2 went with marginal errors up to 0.5; 0.6-0.84 with at most 0.08).
WEAK_EVIDENCE_GAIN = 0.9


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
    if check_evidence:
        warn_if_weak_evidence(graph, unary, name)
    result = belief_propagation(graph, unary, name=name, **bp)
    return result.incoming + logit_pi0, result


def warn_if_weak_evidence(graph: FactorGraph, unary: Tensor, name: str = "layer") -> bool:
    """Warn (:class:`BeliefPropagationWarning`) when the couplings of ``graph`` outweigh the unary log-odds
    ``unary`` (:func:`evidence_stability` above ``WEAK_EVIDENCE_GAIN``); returns whether it warned."""
    gain = evidence_stability(graph, unary) if graph.families else 0.0
    if gain > WEAK_EVIDENCE_GAIN:
        warnings.warn(
            f"{name}: the MRF couplings outweigh the evidence (linearised BP gain {gain:.2f} > "
            f"{WEAK_EVIDENCE_GAIN}); loopy BP may lock onto one mode of the support posterior. Weaken the "
            "couplings (p11 and p01 closer together) or train longer before pruning",
            BeliefPropagationWarning, stacklevel=3)
    return gain > WEAK_EVIDENCE_GAIN


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
        self._warned: set[str] = set()

    @staticmethod
    def turbo_layers(model: nn.Module):
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
            logit_pi0 = math.log(pi0) - math.log1p(-pi0)
            # checked at every iteration (evidence can weaken as training shrinks the weights), warned once a layer
            if name not in self._warned and warn_if_weak_evidence(graph, extrinsic + logit_pi0, f"layer {name!r}"):
                self._warned.add(name)
            warm = self._messages.get(name)  # a checkpoint's messages come back on the CPU
            warm = None if warm is None else tuple([m.to(extrinsic.device) for m in part] for part in warm)
            message, result = module_b(graph, logit_pi0, extrinsic, check_evidence=False, name=f"layer {name!r}",
                                       messages=warm, **self.bp)
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
        for cache in (self._graphs, self._messages, self._bp_iterations, self._warned):
            cache.clear()
        self.iterate(trainer.model)

    def on_batch_end(self, trainer: Trainer, batch: int, loss: float) -> None:
        if (batch + 1) % self._interval == 0 and (batch + 1) // self._interval <= self.updates_per_epoch:
            self.iterate(trainer.model)

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, float]) -> None:
        for name, layer in self.turbo_layers(trainer.model):
            record[f"turbo/{name}/active"] = float((layer.prior.inclusion_logit >= 0).float().mean())
            record[f"turbo/{name}/bp_iterations"] = float(self._bp_iterations.get(name, 0))

    def state_dict(self) -> dict:  # the factor graphs are rebuilt from the priors
        return {"messages": {name: [list(m) for m in messages] for name, messages in self._messages.items()},
                "bp_iterations": dict(self._bp_iterations), "warned": sorted(self._warned)}

    def load_state_dict(self, state: dict) -> None:
        # read from disk onto the CPU: moved to each layer's device at its next iteration
        self._messages = {name: tuple(list(m) for m in messages) for name, messages in state["messages"].items()}
        # a checkpoint from before the check ran at every iteration lists the layers checked, not warned: none
        self._bp_iterations, self._warned = dict(state["bp_iterations"]), set(state.get("warned", ()))

    @torch.no_grad()
    def on_train_end(self, trainer: Trainer) -> None:
        for _, layer in self.turbo_layers(trainer.model):
            module_a_(layer.prior, layer)


__all__ = ["TurboCallback", "WEAK_EVIDENCE_GAIN", "module_b", "warn_if_weak_evidence"]
