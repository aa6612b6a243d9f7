"""The seam between :func:`~bayescompress.compress` and the compression methods.

A method is a small :class:`Method` subclass with a ``name``, a frozen :class:`MethodConfig` subclass holding
*its* settings (defaults = its benchmarked recipe for MLPs, with ``presets`` for CNNs where the best setting
differs) and a few hooks. :meth:`Method.train_and_prune` is the template the pipeline calls: prepare the
network, train it before pruning, ask the pruning strategy for masks, get ready for fine-tuning, apply the
masks, fine-tune. :class:`VariationalMethod` fills in the first two for the methods that train a posterior
by VI under a prior of their own; a method only says which prior, which pruning strategy, and what changes
before the fine-tuning.
"""

from __future__ import annotations

import abc
import json
import math
import warnings
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from bayescompress.inference import Callback, EarlyStopping, SilentUnits, TrainConfig, fit
from bayescompress.inference.checkpoint import Checkpoint, shuffling_generators
from bayescompress.inference.train import LR_SCHEDULES
from bayescompress.methods import registry
from bayescompress.nn import ESTIMATORS, PosteriorInit, bayesian_layers, bayesianize_, set_estimator_
from bayescompress.nn.layers import RHO_RANGE
from bayescompress.priors import Prior
from bayescompress.pruning import (
    Masks,
    PruningStrategy,
    UnsupportedGraphError,
    keep_top_weights,
    prunable_layers,
    prune_within_units,
)
from bayescompress.pruning.compute import (
    INPUTS,
    ChainCosts,
    fill_kept_units,
    fold_input_means_,
    remove_units_to_macs,
    taylor_importance,
)
from bayescompress.pruning.importance import sweep_scores
from bayescompress.settings import Choice, Flag, Integer, Real, Settings, setting

# finetune_distill's default under a compute budget: at 20k MACs on LeNet-300-100 it moved the export from 2.11 %
# to 1.71 % error (docs/benchmarks.md, session 16)
BUDGET_DISTILL = 0.9


def _distill_weight(finetune_distill: float | None, target_macs: float | None) -> float:
    """``finetune_distill`` with its default resolved: 0.9 under a compute budget, 0 without."""
    if finetune_distill is not None:
        return finetune_distill
    return BUDGET_DISTILL if target_macs is not None else 0.0


def effective_settings(settings: dict) -> dict:
    """A method's settings as a run records them, with the defaults that depend on other settings resolved, so
    two records compare equal when their runs use the same recipe (``finetune_distill`` none is 0.9 under a
    compute budget and 0 without: a run recorded with an explicit 0, before none was the default, is the same, and
    so is one recorded before the setting existed)."""
    # a record from before finetune_distill existed has no entry: its run did not distil, as none resolves now
    return {**settings, "finetune_distill": _distill_weight(settings.get("finetune_distill"),
                                                            settings.get("target_macs"))}


def setting_differences(wanted: dict, saved: dict, settings: type, ignore: Collection[str] = ()) -> list[str]:
    """``key: saved there, wanted now`` for each of ``settings``' fields but ``ignore`` that differs between two
    records (as JSON gives them back); a setting added since ``saved`` was written matches at its default, so
    the run is what it would be now."""
    defaults = json.loads(json.dumps({f.name: f.default for f in fields(settings)}, default=str))
    return [f"{key}: {saved.get(key)!r} there, {wanted.get(key)!r} now"
            for key in sorted((wanted.keys() | saved.keys()) - set(ignore)) if wanted.get(key) != saved.get(key)
            and not (key not in saved and wanted.get(key) == defaults.get(key))]


def network_kind(model: nn.Module) -> str:
    """``"cnn"`` when ``model`` has a ``Conv2d``, else ``"mlp"``: which preset of a method's recipe applies."""
    return "cnn" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "mlp"


@dataclass(frozen=True, kw_only=True)
class MethodConfig(Settings):
    """Settings every method has: the fine-tuning of the surviving weights under the masks.

    ``after_training`` names the settings read only after the training before pruning (pruning, budgets,
    fine-tuning): the ones a run started from another run's posterior (``compress(posterior=...)``) may change.
    """

    after_training: ClassVar[frozenset[str]] = frozenset(
        {"finetune_epochs", "finetune_lr", "finetune_distill", "finetune_distill_temperature", "target_macs",
         "macs_rounds", "macs_regrow"})

    finetune_epochs: int = setting(10, "epochs of training the surviving weights under the masks (0 = none)",
                                   Integer(0))
    finetune_lr: float = setting(1e-3, "peak learning rate of the fine-tuning (cosine-annealed to 0)",
                                 Real(0.0, 10.0, low_open=True))
    finetune_distill: float | None = setting(
        None, "weight w of the original network's predicted probabilities in the fine-tuning's targets: "
        "cross-entropy with (1 - w) * label + w * original (0 = the labels only; none = 0.9 under a compute budget, "
        "target_macs, whose small network learns more from the original than from the labels, and 0 without)",
        Real(0.0, 1.0, high_open=True, optional=True))
    finetune_distill_temperature: float = setting(
        4.0, "temperature T of finetune_distill: both networks' logits divided by T, the soft term scaled by T^2 "
        "(1 = the mixed targets above; larger T passes on the original's ranking of the wrong classes)",
        Real(0.0, 100.0, low_open=True))
    target_macs: int | None = setting(
        None, "after pruning, also remove whole units and input features, the least important per MAC first, "
        "until the exported network needs at most this many multiply-accumulates per example (none = no budget; "
        "sequential networks)", Integer(1, optional=True))
    macs_rounds: int = setting(6, "rounds of unit removal towards target_macs, each followed by one epoch of "
                               "fine-tuning at finetune_lr", Integer(1))
    macs_regrow: bool = setting(True, "with target_macs, let the weights pruned inside the kept units grow back "
                                "(the dense export pays for them anyway); off keeps the method's weight sparsity",
                                Flag())

    @property
    def distill_weight(self) -> float:
        """``finetune_distill``, its default resolved: 0.9 under a compute budget, 0 without."""
        return _distill_weight(self.finetune_distill, self.target_macs)


@dataclass(frozen=True, kw_only=True)
class VariationalConfig(MethodConfig):
    """Settings of the methods that train a posterior by VI before pruning."""

    after_training: ClassVar[frozenset[str]] = MethodConfig.after_training | {
        "within_unit_drop", "target_compression", "compression_rounds"}

    epochs: int = setting(10, "VI epochs before pruning (an upper bound under max_val_drop)", Integer(1))
    lr: float = setting(1e-3, "learning rate of the posterior means", Real(0.0, 10.0, low_open=True))
    rho_lr: float | None = setting(None, "learning rate of the posterior rho (none = lr)",
                                   Real(0.0, 10.0, low_open=True, optional=True))
    lr_schedule: str = setting("constant", "learning-rate schedule of the VI training: constant, cosine or linear "
                               "(both annealed to 0 over the epochs)", Choice(LR_SCHEDULES))
    init_rho: float | None = setting(-6.0, "starting rho of every weight, sigma = softplus(rho); none = sigma "
                                     "proportional to |w|", Real(*RHO_RANGE, optional=True))
    kl_warmup_epochs: int = setting(0, "epochs over which the KL weight grows linearly from 0", Integer(0))
    kl_weight: float = setting(1.0, "KL weight after warm-up (1 = the ELBO; below 1 prunes less)",
                               Real(0.0, 1.0, low_open=True))
    max_val_drop: float | None = setting(
        0.05, "stop the training before pruning once the posterior-mean validation accuracy falls more than "
        "this below its start, and prune the last state within it (none = train all epochs)",
        Real(0.0, 1.0, optional=True))
    val_checks_per_epoch: int = setting(1, "validation checks per epoch for max_val_drop", Integer(1))
    prior_scale: float = setting(0.5, "standard deviation s0 of the Gaussian prior of the fine-tuning",
                                 Real(0.0, low_open=True))
    estimator: str = setting("lrt", "how training passes sample: lrt (local reparameterisation, per-example "
                             "noise), flipout (one perturbation, sign-flipped per example) or shared (one weight "
                             "sample per batch: cheapest, noisiest)", Choice(ESTIMATORS))
    within_unit_drop: float | None = setting(
        None, "also prune single weights inside the surviving units, lowest SNR first, as far as the "
        "posterior-mean validation accuracy stays within this of the strategy's masks' (none = the strategy's "
        "masks as they are)", Real(0.0, 1.0, optional=True))
    target_compression: float | None = setting(
        None, "after pruning, also remove the lowest-SNR kept weights in compression_rounds rounds, one epoch of "
        "fine-tuning after each, until the pruned layers' |W|/|W!=0| reaches this (none = no budget)",
        Real(1.0, low_open=True, optional=True))
    compression_rounds: int = setting(6, "rounds of weight removal towards target_compression, each followed by "
                                      "one epoch of fine-tuning at finetune_lr", Integer(1))


@dataclass
class TrainingContext:
    """What the pipeline hands a method: the data, an example input (for the layer order), the output layers'
    names (kept whole), where and how to run, and ``observers``: callbacks every training phase of the method
    must get (e.g. the training-cost counter), after its own; the run's ``checkpoint`` folder, if any; and the
    ``original`` network (the teacher of ``finetune_distill``)."""

    train_loader: Iterable
    val_loader: Iterable
    example: Tensor
    outputs: tuple[str, ...]
    seed: int = 0
    device: str = "cpu"
    quiet: bool = False
    observers: list[Callback] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    original: nn.Module | None = None

    def fit(self, network: nn.Module, config: TrainConfig, callbacks: list[Callback]) -> list[dict]:
        """:func:`~bayescompress.inference.fit` on the context's data, with ``callbacks`` and the observers (and,
        when the run keeps a checkpoint, the next training phase's); ``config.distill`` > 0 distils the
        ``original`` network."""
        phase = self.checkpoint.next_phase() if self.checkpoint is not None else None
        return fit(network, self.train_loader, self.val_loader, config, [*callbacks, *self.observers],
                   checkpoint=phase, teacher=self.original if config.distill else None)

    def train_config(self, **settings: Any) -> TrainConfig:
        """A :class:`~bayescompress.TrainConfig` with the context's seed, device and verbosity."""
        return TrainConfig(seed=self.seed, device=self.device, quiet=self.quiet, eval_samples=0, **settings)


@dataclass
class Trained:
    """A method's result: the trained, masked network, its masks, one record per epoch of every training phase,
    the per-weight inclusion probabilities the pruning read (methods with weight-level supports), and the
    network's state as the pruning found it and its weights' :func:`~bayescompress.pruning.importance.sweep_scores`
    then (CPU copies; operating points re-prune that state, the figures draw those scores), what
    :meth:`Method.refine_masks` recorded (``metrics.json``'s ``"pruning"``), and the states of the training
    loader's shuffling generators then (a run from this posterior restores them, so its fine-tuning sees the
    batches in the same order)."""

    network: nn.Module
    masks: Masks
    history: list[dict] = field(default_factory=list)
    inclusion: dict[str, Tensor] = field(default_factory=dict)
    before_pruning: dict[str, Tensor] = field(default_factory=dict)
    scores: dict[str, Tensor] = field(default_factory=dict)
    pruning: dict[str, Any] = field(default_factory=dict)
    shuffling: list[Tensor] = field(default_factory=list)


class Method(abc.ABC):
    """Base of every compression method.

    Subclasses set ``name`` (the registry key), ``config_class`` (a :class:`MethodConfig` subclass whose
    defaults are the MLP recipe), optionally ``presets`` (``{"cnn": {setting: value}}``: where the CNN recipe
    differs) and ``bayesian`` (False for a method whose result has no posterior), and implement the hooks.

    ``Method(pi0=0.005)`` keeps the given settings and takes the rest from the preset of the network it is
    applied to; ``Method(config=Config(...))`` uses that config as it is, on every network.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    bayesian: ClassVar[bool] = True

    def __init__(self, config: MethodConfig | None = None, **settings: Any) -> None:
        if config is not None and settings:
            raise ValueError(f"give {self.name} either a config or settings ({', '.join(settings)}), not both")
        if config is not None and not isinstance(config, self.config_class):
            owner = [name for name in registry.names() if registry.get(name).config_class is type(config)]
            raise ValueError(
                f"config is a {type(config).__name__}"
                + (f", the settings of {' / '.join(owner)}" if owner else "")
                + f"; the {self.name} method takes a {self.config_class.__name__}"
            )
        for key in settings:
            if key not in self.config_class.names():
                raise ValueError(unknown_setting_message(key, self.name, self.config_class))
        if config is None:  # validate now, with the MLP defaults: a bad value fails before any work
            self.config_class(**settings)
        self.config = config
        self.settings = settings

    def configure(self, model: nn.Module) -> MethodConfig:
        """The config this method runs with on ``model``: the given one, or the preset of ``model``'s kind
        updated with the given settings."""
        if self.config is not None:
            return self.config
        return self.config_class(**{**self.presets.get(network_kind(model), {}), **self.settings})

    def check(self, model: nn.Module, config: MethodConfig, example: Tensor, steps_per_epoch: int | None) -> None:
        """Refuse, before any work, settings that cannot work on ``model`` (in eval mode; it is only run) and its
        data: a compute budget its cost model cannot read or its smallest export cannot meet, and, given
        ``steps_per_epoch`` (None: no training will run, or the loader has no length), what the training
        needs. ``compress`` calls it before it opens a checkpoint, ``compare`` for every method before its
        first run."""
        self._costs(model, config, example)

    def train_and_prune(self, network: nn.Module, config: MethodConfig, context: TrainingContext,
                        trained: dict[str, Tensor] | None = None, shuffling: Sequence[Tensor] = ()) -> Trained:
        """Train ``network`` (in place), prune it and fine-tune the survivors: the whole method. With
        ``trained`` (the state a run of this method and these training settings ended its training with), the
        training is skipped and that state is pruned and fine-tuned instead; ``shuffling`` (that run's
        :attr:`Trained.shuffling`) puts the training loader's order where the run's was, when the loader has as
        many shuffling generators."""
        costs = self._costs(network, config, context.example)
        self.prepare(network, config, context)
        generators = shuffling_generators(context.train_loader)
        if trained is None:
            history = self.train(network, config, context)
        else:
            load_trained_state_(network, trained)
            history = []
            if len(shuffling) == len(generators):  # another loader: its own order, as a fresh run would have
                for generator, state in zip(generators, shuffling):
                    generator.set_state(state)
            elif generators and not shuffling:
                warnings.warn("the run the posterior comes from kept no loader order (no shuffling.safetensors): "
                              "the fine-tuning sees the batches in the order the loader gives now, so its result "
                              "differs from the run's by the order alone", stacklevel=3)
        before_pruning = {name: t.detach().cpu().clone() for name, t in network.state_dict().items()}
        shuffling_after = [generator.get_state() for generator in generators]
        scores = {name: sweep_scores(layer).cpu() for name, layer in prunable_layers(network)}
        masks, pruning = self.refine_masks(network, config, self.strategy(config).masks(network, context.outputs),
                                           context)
        inclusion = {name: probs.cpu() for name, layer in bayesian_layers(network)
                     if (probs := layer.prior.inclusion(layer).weight) is not None}
        callbacks = self.before_finetune(network, config, masks)
        masks.apply_(network)
        masks, rounds, budget = self.prune_in_rounds(network, config, masks, context, callbacks)
        history += rounds
        if budget:
            pruning["compression_budget"] = budget
        if costs is not None:
            masks, history, callbacks, pruning["macs_budget"] = self._reach_macs(
                network, config, masks, context, costs, history, callbacks)
        if config.finetune_epochs:  # annealed: settle the survivors
            history += context.fit(network, context.train_config(
                epochs=config.finetune_epochs, lr=config.finetune_lr, lr_schedule="cosine",
                distill=config.distill_weight, distill_temperature=config.finetune_distill_temperature),
                callbacks)
        return Trained(network, masks, history, inclusion, before_pruning, scores, pruning, shuffling_after)

    @abc.abstractmethod
    def prepare(self, network: nn.Module, config: MethodConfig, context: TrainingContext) -> None:
        """Get ``network`` ready for training (e.g. convert it to a Bayesian network under the method's prior)."""

    @abc.abstractmethod
    def train(self, network: nn.Module, config: MethodConfig, context: TrainingContext) -> list[dict]:
        """The training before pruning; returns its epoch records. Train through ``context.fit`` (or pass
        ``context.observers`` to every fit), so the run's training cost is counted."""

    @abc.abstractmethod
    def strategy(self, config: MethodConfig) -> PruningStrategy:
        """The pruning strategy that turns the trained network into masks."""

    def refine_masks(self, network: nn.Module, config: MethodConfig, masks: Masks,
                     context: TrainingContext) -> tuple[Masks, dict[str, Any]]:
        """A second look at the strategy's ``masks`` with the validation data (e.g. a threshold chosen on them);
        returns the masks and a record of what was decided. By default the masks are kept as they are."""
        return masks, {}

    def before_finetune(self, network: nn.Module, config: MethodConfig, masks: Masks) -> list[Callback]:
        """Changes between pruning and fine-tuning (e.g. a change of prior); returns the fine-tuning's callbacks."""
        return []

    def prune_in_rounds(self, network: nn.Module, config: MethodConfig, masks: Masks, context: TrainingContext,
                        callbacks: list[Callback]) -> tuple[Masks, list[dict], dict[str, Any]]:
        """Further pruning of the masked ``network``, alternated with fine-tuning (a compression budget);
        returns the masks, the rounds' epoch records and a record of what was done. By default none."""
        return masks, [], {}

    @staticmethod
    def _round_epoch(network: nn.Module, config: MethodConfig, context: TrainingContext,
                     callbacks: list[Callback]) -> list[dict]:
        """The one epoch of fine-tuning after a round of a budget (compute or compression)."""
        return context.fit(network, context.train_config(
            epochs=1, lr=config.finetune_lr, distill=config.distill_weight,
            distill_temperature=config.finetune_distill_temperature), callbacks)

    @staticmethod
    def _costs(network: nn.Module, config: MethodConfig, example: Tensor) -> ChainCosts | None:
        """The cost model of ``network`` under ``config``'s compute budget (None without one); refuses a network it
        cannot read and a budget below its smallest export."""
        if config.target_macs is None:
            return None
        try:
            costs = ChainCosts.of(network, example)
        except UnsupportedGraphError as error:
            raise UnsupportedGraphError(f"target_macs needs a sequential network (the built-in export's cost "
                                        f"model): {error}; leave target_macs out (the graph export still removes "
                                        "what the masks switch off), or budget the weights (target_compression, "
                                        "keep_fraction)") from None
        # the smallest export: one input, one unit in every hidden layer, the output layer whole
        outputs = network.get_submodule(costs.names[-1]).weight.shape[0]
        least = costs.macs(torch.tensor([1] * (len(costs.names) - 1) + [outputs]), 1)
        if config.target_macs < least:
            raise ValueError(f"target_macs {config.target_macs:,} is below the least this network's export can "
                             f"cost, {least:,} MACs (one input, one unit in every hidden layer, the {outputs} "
                             f"outputs); give target_macs >= {least:,}")
        return costs

    def _reach_macs(self, network, config, masks, context, costs, history, callbacks):
        """Remove units towards ``target_macs`` in ``macs_rounds`` geometric steps, one epoch of fine-tuning
        after each (removed units stay silent: bias 0, as the importance assumed)."""
        start, rounds, own = costs.masks_macs(masks), [], callbacks
        off = {name: torch.zeros(masks.weight[name].shape[0], dtype=torch.bool) for name in costs.names}
        for step in range(1, config.macs_rounds + 1) if start > config.target_macs else ():
            goal = max(config.target_macs, round(start * (config.target_macs / start) ** (step / config.macs_rounds)))
            importance, input_mean = taylor_importance(network, costs.names, context.val_loader,
                                                       device=context.device)
            masks, removed = remove_units_to_macs(masks, costs, importance, goal)
            fold_input_means_(network.get_submodule(costs.names[0]), removed[INPUTS], input_mean)
            if config.macs_regrow:  # the pruned entries restart from the values they were pruned at
                masks = fill_kept_units(masks, costs)
            masks.apply_(network, replace=True)
            off = {name: off[name] | removed[name] for name in costs.names}
            callbacks = [*own, SilentUnits(network, {name: ~gone for name, gone in off.items()})]
            history += self._round_epoch(network, config, context, callbacks)
            units, _ = costs.counts(masks)
            rounds.append({"macs": costs.masks_macs(masks), "units": units.tolist(),
                           "inputs_removed": int(removed[INPUTS].sum()), "val_accuracy": history[-1].get("val_accuracy")})
        if (end := costs.masks_macs(masks)) > config.target_macs:
            warnings.warn(f"target_macs {config.target_macs:,} is out of reach: with one unit per layer the "
                          f"exported network still needs {end:,} MACs", stacklevel=4)
        return masks, history, callbacks, {"target_macs": config.target_macs, "start_macs": start, "rounds": rounds}

    def __repr__(self) -> str:
        given = self.config if self.config is not None else ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"{type(self).__name__}({given})"


class VariationalMethod(Method):
    """A method that converts the network under its own prior and trains the posterior by VI before pruning,
    watching the posterior-mean validation accuracy (``max_val_drop``)."""

    config_class: ClassVar[type[VariationalConfig]] = VariationalConfig

    @abc.abstractmethod
    def prior(self, config: VariationalConfig) -> Prior:
        """The prior the network is converted under."""

    def callbacks(self, network: nn.Module, config: VariationalConfig, context: TrainingContext) -> list[Callback]:
        """Callbacks of the training before pruning (besides early stopping)."""
        return []

    def train_settings(self, config: VariationalConfig) -> dict[str, Any]:
        """:class:`~bayescompress.TrainConfig` fields of the training before pruning."""
        return dict(epochs=config.epochs, lr=config.lr, rho_lr=config.rho_lr, lr_schedule=config.lr_schedule,
                    kl_warmup_epochs=config.kl_warmup_epochs, kl_weight=config.kl_weight)

    def prepare(self, network, config, context) -> None:
        bayesianize_(network, self.prior(config), init=PosteriorInit(rho=config.init_rho),
                     example_input=context.example)
        set_estimator_(network, config.estimator)

    def refine_masks(self, network, config, masks, context):
        if config.within_unit_drop is None:
            return masks, {}
        masks, record = prune_within_units(network, masks, context.val_loader, context.outputs,
                                           config.within_unit_drop, device=context.device)
        return masks, {"within_units": record}

    def prune_in_rounds(self, network, config, masks, context, callbacks):
        """Cut the kept weights geometrically from the masks' count to ``total / target_compression`` over
        ``compression_rounds`` rounds, lowest SNR first across all layers, one epoch of fine-tuning after each:
        the survivors adapt before the next cut ranks them, as gradual magnitude pruning does."""
        if config.target_compression is None:
            return masks, [], {}
        total, start = masks.total_weights(), masks.kept_weights()
        goal = max(1, math.floor(total / config.target_compression))
        history, rounds = [], []
        for step in range(1, config.compression_rounds + 1) if start > goal else ():
            count = max(goal, math.floor(start * (goal / start) ** (step / config.compression_rounds)))
            masks = keep_top_weights(network, masks, count, context.outputs)
            masks.apply_(network, replace=True)
            history += self._round_epoch(network, config, context, callbacks)
            rounds.append({"kept": masks.kept_weights(), "compression": total / max(masks.kept_weights(), 1),
                           "val_accuracy": history[-1].get("val_accuracy")})
        return masks, history, {"target_compression": config.target_compression, "start_kept": start,
                                "rounds": rounds}

    def train(self, network, config, context) -> list[dict]:
        callbacks = self.callbacks(network, config, context)
        if config.max_val_drop is not None:  # last: see EarlyStopping
            callbacks.append(EarlyStopping(context.val_loader, config.max_val_drop, config.val_checks_per_epoch))
        return context.fit(network, context.train_config(**self.train_settings(config)), callbacks)


def load_trained_state_(network: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a run's trained state into ``network`` as :meth:`Method.prepare` left it; a layer the run trained
    under a weight mask (a subspace method) gets that mask's parametrisation first."""
    for name, layer in prunable_layers(network):
        if f"{name}.weight_orig" in state and not hasattr(layer, "weight_mask"):
            prune.identity(layer, "weight")
    network.load_state_dict(state)


def unknown_setting_message(key: str, method: str, config_class: type[Settings], flags: bool = False) -> str:
    """Names the methods ``key`` is a setting of (or says it is none's) and lists ``method``'s settings; with
    ``flags``, as command-line flags."""
    show = (lambda name: "--" + name.replace("_", "-")) if flags else str
    owners = registry.owners(key)
    where = f"a setting of {', '.join(owners)}, not of {method}" if owners else f"not a setting of {method}"
    return f"{show(key)} is {where}; {method}'s settings are: {', '.join(map(show, config_class.names()))}"


__all__ = ["Method", "MethodConfig", "Trained", "TrainingContext", "VariationalConfig",
           "VariationalMethod", "network_kind", "setting_differences", "unknown_setting_message"]
