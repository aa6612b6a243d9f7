"""The ELBO training loop shared by every method (and by plain pretraining, where the KL is zero).

Per mini-batch the loss is ``mean NLL + beta_t * KL_total / N_train`` (SPEC section 0): the KL is summed over
all layers and divided by the training-set size once. Methods plug in through :class:`Callback`.
"""

from __future__ import annotations

import signal
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import SubsetRandomSampler
from tqdm.auto import tqdm

from bayescompress._validation import (
    check_choice,
    check_device,
    check_in_range,
    check_non_negative_int,
    check_positive,
    check_positive_int,
)
from bayescompress import distributed
from bayescompress.data import as_batch, batches_per_epoch, index_sampler
from bayescompress.inference.checkpoint import PhaseCheckpoint, rng_state, set_rng_state
from bayescompress.io import WeightsMismatchError, load_weights_
from bayescompress.metrics import evaluate
from bayescompress.nn.model import bayesian_layers, kl_divergence, shared_sigma, update_priors


LR_SCHEDULES = ("constant", "cosine", "linear")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; raised before the step so the weights stay the last finite ones
    (and a checkpoint, if the run keeps one, stays the last good epoch's)."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while a checkpointed run trained: the checkpoint now holds the state after the
    last finished batch, and resuming continues from there."""


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by another network, method or set of callbacks than the run resuming from it."""


@torch.no_grad()
def _culprits(model: torch.nn.Module, x: torch.Tensor, kl: torch.Tensor) -> str:
    """Where a non-finite loss comes from: the inputs, the layers whose parameters are no longer finite, and
    (when the KL is the term) the layers whose prior's KL is not."""
    found = []
    if not torch.isfinite(x).all():
        found.append("the input batch holds NaN/Inf")
    for name, layer in bayesian_layers(model):
        bad = [p for p, t in layer.named_parameters(recurse=False) if not torch.isfinite(t).all()]
        if bad:
            found.append(f"layer {name!r} has non-finite {', '.join(bad)}")
        if not torch.isfinite(kl):
            term = layer.kl()
            if not torch.isfinite(term):
                found.append(f"the KL of layer {name!r} under its {type(layer.prior).__name__} is {term.item()}")
    return ": " + "; ".join(found) if found else ""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`fit`, validated on construction.

    Parameters
    ----------
    epochs: passes over the training data (>= 1).
    lr: Adam learning rate (> 0).
    prior_lr: learning rate of the priors' own variational parameters (spike-and-slab gate logits and
        log-scales); None = ``lr``. These live on a log-odds / log scale and need to travel several units
        in a few epochs, which a weight-sized step cannot do.
    input_gate_lr: learning rate of the input-feature gate logits (spike-and-slab ``input_gates``); None =
        the prior's rate. Under Adam every gate whose gradient the KL dominates falls at the same speed, so
        inputs and units are removed together; a faster rate removes the inputs that carry nothing first,
        which lowers the first layer's per-unit slab KL (fewer weights per unit) before its units are weighed.
    rho_lr: learning rate of the posterior standard deviations' parameters rho; None = ``lr``. A larger value
        lets sigma reach the width the data allow within an epoch or two — before spike-and-slab gates
        decide, since a unit's slab KL, which the gate weighs against the data, depends on it.
    weight_decay: weight decay (>= 0); for deterministic pretraining only, VI has its prior.
    optimizer: ``"adam"`` (the default) or ``"sgd"`` (with ``momentum``; SSVI's choice).
    momentum: SGD momentum, in [0, 1).
    lr_schedule: ``"constant"``, ``"cosine"`` (annealed to 0 over all steps) or ``"linear"`` (decayed linearly to 0
        over all steps, Sparse VD's schedule).
    kl_weight: beta once warm-up is over (> 0; 1 is the ELBO).
    kl_warmup_epochs: beta grows linearly from 0 to ``kl_weight`` over this many epochs (0 = no warm-up).
    distill: weight w of a teacher's predicted probabilities in the targets, in [0, 1): the data term is
        ``(1 - w) * CE(label) + w * T^2 * CE(softmax(teacher(x) / T))``, the student's logits also divided by T
        (0 = the labels only; a positive weight needs ``fit(..., teacher=...)``).
    distill_temperature: T above (> 0; default 4). At 1 the term is the cross-entropy with the mixed targets
        ``(1 - w) * one_hot(label) + w * softmax(teacher(x))``; larger T exposes the teacher's ranking of the
        wrong classes, which a confident teacher's probabilities at T = 1 hide (Hinton et al. 2015); T^2 keeps
        the soft term's gradient on the scale of the labels' term.
    eval_samples: Monte-Carlo samples for the per-epoch validation metrics (0 = posterior mean).
    seed: seeds torch before training (None leaves the global RNG alone).
    device: where to train, e.g. ``"cpu"`` or ``"cuda"``.
    quiet: hide the progress bars (over the epochs, and over the batches of each epoch).

    Example
    -------
    >>> TrainConfig(epochs=5, kl_warmup_epochs=2).epochs
    5
    """

    epochs: int = 10
    lr: float = 1e-3
    prior_lr: float | None = None
    input_gate_lr: float | None = None
    rho_lr: float | None = None
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.9
    lr_schedule: str = "constant"
    kl_weight: float = 1.0
    kl_warmup_epochs: int = 0
    distill: float = 0.0
    distill_temperature: float = 4.0
    eval_samples: int = 10
    seed: int | None = 0
    device: str = "cpu"
    quiet: bool = False

    def __post_init__(self) -> None:
        check_positive_int("epochs", self.epochs)
        check_in_range("lr", self.lr, 0.0, 10.0, low_inclusive=False)
        for name in ("prior_lr", "input_gate_lr", "rho_lr"):
            if getattr(self, name) is not None:
                check_in_range(name, getattr(self, name), 0.0, 10.0, low_inclusive=False)
        check_in_range("weight_decay", self.weight_decay, 0.0)
        check_choice("optimizer", self.optimizer, ("adam", "sgd"))
        check_in_range("momentum", self.momentum, 0.0, 1.0, high_inclusive=False)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_positive("kl_weight", self.kl_weight)
        check_non_negative_int("kl_warmup_epochs", self.kl_warmup_epochs)
        check_in_range("distill", self.distill, 0.0, 1.0, high_inclusive=False)
        check_positive("distill_temperature", self.distill_temperature)
        check_non_negative_int("eval_samples", self.eval_samples)
        if self.seed is not None:
            check_non_negative_int("seed", self.seed)
        check_device("device", self.device)


class Callback:
    """Hooks a method plugs into the loop; every hook is optional. ``trainer`` is the running :class:`Trainer`.

    Callbacks run in the order given, except ``on_train_end``, which runs in reverse (the last set up is the
    first torn down): a callback that snapshots the model after the others' ``on_train_begin`` (early
    stopping, placed last) also restores it before their ``on_train_end``.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first epoch (the optimiser exists)."""

    def on_after_backward(self, trainer: Trainer) -> None:
        """Gradients are available and the optimiser has not stepped yet (set ``trainer.skip_step`` to skip it)."""

    def on_batch_end(self, trainer: Trainer, batch: int, loss: float) -> None:
        """After each optimiser step (or skipped step), with the batch's loss."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, float]) -> None:
        """After the priors' closed-form updates and validation; ``record`` may be extended."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch, also when training stopped early."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to continue this callback's work exactly (tensors, numbers, strings,
        lists, dicts); what ``on_train_begin`` rebuilds from the model need not be here."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back :meth:`state_dict`; called after ``on_train_begin`` when a run resumes."""


class Trainer:
    """Runs the ELBO loop; see :func:`fit` for the arguments.

    Attributes callbacks may read or change: ``model``, ``optimizer``, ``config``, ``epoch`` (0-based),
    ``step`` (global batch counter), ``batch_size`` (examples in the current batch), ``total_steps`` (steps
    the run will take unless stopped), ``beta`` (current KL weight), ``history`` (one record per epoch),
    ``skip_step`` (set it in ``on_after_backward`` to leave the parameters of this step alone; reset every
    step), ``stop_training`` (set it to True to end training: the current epoch stops after this batch, its record,
    the priors' updates, validation and ``on_epoch_end`` still run, then ``on_train_end``).

    With a ``checkpoint`` (:class:`~bayescompress.inference.checkpoint.PhaseCheckpoint`) the whole state (model,
    optimiser, schedule, callbacks' ``state_dict``, random-number states and the data order, the epoch and the
    position in it) is written at every epoch end and, on SIGINT/SIGTERM, after the current batch (then
    :class:`TrainingInterrupted` is raised); a run given an existing checkpoint continues from it and ends where
    the uninterrupted run would have. Under torch.distributed (:mod:`bayescompress.distributed`) the forward
    pass runs through ``DistributedDataParallel``; only rank 0 shows progress and writes the checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable,
        val_loader: Iterable | None = None,
        config: TrainConfig | None = None,
        callbacks: Sequence[Callback] = (),
        n_train: int | None = None,
        checkpoint: PhaseCheckpoint | None = None,
        teacher: nn.Module | None = None,
    ) -> None:
        self.config = config or TrainConfig()
        if (teacher is None) != (self.config.distill == 0):
            raise ValueError("distill > 0 needs a teacher network (fit(..., teacher=...)), and a teacher needs "
                             f"distill > 0; got distill={self.config.distill} and "
                             f"{'no teacher' if teacher is None else 'a teacher'}")
        self.teacher = teacher.eval() if teacher is not None else None
        self.checkpoint = checkpoint
        self.forward_module: nn.Module = model  # the DDP wrapper in a distributed run
        self._interrupted: int | None = None
        self.model = model
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.callbacks = list(callbacks)
        self.n_train = n_train if n_train is not None else _dataset_size(train_loader)
        check_positive_int("n_train", self.n_train)
        self.steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
        self._told_batches = False
        self._dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        self.device = torch.device(self.config.device)
        groups = _parameter_groups(model, self.config)
        if self.config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=self.config.lr, momentum=self.config.momentum,
                                             weight_decay=self.config.weight_decay)
        else:  # fused Adam updates each tensor in one pass: VI doubles the parameter count, so the optimiser matters
            self.optimizer = torch.optim.Adam(groups, lr=self.config.lr, weight_decay=self.config.weight_decay,
                                              fused=_fused_adam_supported(self.device))
        total_steps = self.config.epochs * self.steps_per_epoch
        self.total_steps = total_steps
        self.scheduler = _scheduler(self.optimizer, self.config.lr_schedule, total_steps)
        self.epoch = 0
        self.step = 0
        self.beta = self.config.kl_weight
        self.history: list[dict[str, float]] = []
        self.stop_training = False
        self.skip_step = False
        self.batch_size = 0

    def _beta(self) -> float:
        warmup_steps = self.config.kl_warmup_epochs * self.steps_per_epoch
        if warmup_steps == 0:
            return self.config.kl_weight
        return self.config.kl_weight * min(1.0, (self.step + 1) / warmup_steps)

    def _emit(self, hook: str, *args) -> None:
        for callback in reversed(self.callbacks) if hook == "on_train_end" else self.callbacks:
            getattr(callback, hook)(self, *args)

    def loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, mean NLL of the labels, KL_total) of one mini-batch.

        With a teacher the loss's data term is the distilled one (:meth:`_distilled`); the NLL stays the labels'
        cross-entropy, so the history's ``nll`` means the same with and without distillation.
        """
        with shared_sigma(self.model):
            logits = self.forward_module(x)
            if not isinstance(logits, Tensor):  # eval mode was checked; auxiliary heads show only in training
                raise ValueError(f"the model returns a {type(logits).__name__} in training mode; training needs one "
                                 "(N, classes) tensor of logits: turn its auxiliary outputs off (aux_logits=False in "
                                 "GoogLeNet and Inception-v3) or wrap it in a module whose forward returns the logits")
            try:
                nll = F.cross_entropy(logits, y)
            except IndexError as error:  # a label past the outputs (or negative): say so in the data's terms
                classes = logits.shape[-1] if logits.dim() else 0
                if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
                    raise ValueError(f"a training label ({int(y.min())} to {int(y.max())} in this batch) is not one "
                                     f"of the network's {classes} classes; labels must be class indices 0 to "
                                     f"{classes - 1}") from error
                raise
            data = nll if self.teacher is None else self._distilled(x, logits, nll)
            kl = kl_divergence(self.model).to(nll.device)
        return data + self.beta * kl / self.n_train, nll, kl

    def _distilled(self, x: Tensor, logits: Tensor, nll: Tensor) -> Tensor:
        """The labels' cross-entropy ``nll`` mixed with the teacher's at temperature T (``distill``)."""
        temperature = self.config.distill_temperature
        with torch.no_grad():
            soft = F.softmax(self.teacher(x) / temperature, dim=-1)
        soft_term = F.cross_entropy(logits / temperature, soft) * temperature ** 2
        return torch.lerp(nll, soft_term, self.config.distill)

    def fit(self) -> list[dict[str, float]]:
        """Run the loop; returns one record per epoch (see :func:`fit`)."""
        if self.config.seed is not None:  # other ranks draw other noise; everything they decide is shared
            torch.manual_seed(self.config.seed + 7919 * distributed.rank())
        self.model.to(self.device)
        self._emit("on_train_begin")
        saved = self.checkpoint.load() if self.checkpoint is not None else None
        position = self._restore(saved) if saved is not None else None
        start = saved["epoch"] if saved is not None else 0
        finished = saved is not None and saved["finished"]
        if distributed.active():  # after on_train_begin, which may re-register parameters (SSVI's masks)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_module = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if finished:  # the phase ended in the checkpoint: only on_train_end is left
            self.epoch, start = start - 1, self.config.epochs
        epochs = tqdm(range(start, self.config.epochs), initial=start, total=self.config.epochs, desc="train",
                      unit="epoch", disable=self.config.quiet or not distributed.is_main())
        with self._signals():
            for self.epoch in epochs:
                record = self._train_epoch(position)
                position = None
                update_priors(self.model)
                if self.val_loader is not None:
                    samples = self.config.eval_samples if bayesian_layers(self.model) else 0
                    val = evaluate(self.model, self.val_loader, samples=samples, device=self.device)
                    record.update({f"val_{k}": v for k, v in val.items()})
                self._emit("on_epoch_end", self.epoch, record)
                self.history.append(record)
                epochs.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in ("loss", "val_accuracy")})
                finished = self.stop_training or self.epoch + 1 == self.config.epochs
                if self.checkpoint is not None:
                    self.checkpoint.save(self._state(self.epoch + 1, finished))
                if not finished and self._stop_requested():
                    self._raise_interrupted("after the epoch")
                if self.stop_training:
                    break
        self.forward_module = self.model
        self._emit("on_train_end")
        if self._stop_requested():  # the phase is complete and checkpointed: stop before the next one
            self._raise_interrupted("at the end of the training phase")
        return self.history

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """With a checkpoint, SIGINT and SIGTERM end the run after the current batch, checkpointed."""
        if self.checkpoint is None or threading.current_thread() is not threading.main_thread():
            yield
            return

        def note(signum, _frame) -> None:
            self._interrupted = signum

        previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():  # None: installed outside Python, not restorable from here
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _stop_requested(self) -> bool:
        """Whether a signal asked the run to stop, on any rank: torchrun signals each rank at its own moment,
        so the ranks agree here and all stop after the same batch."""
        if distributed.any_rank(self._interrupted is not None):
            self._interrupted = self._interrupted or signal.SIGTERM
            return True
        return False

    def _raise_interrupted(self, where: str) -> None:
        name = signal.Signals(self._interrupted).name
        raise TrainingInterrupted(f"{name} received: training stopped {where} (epoch {self.epoch + 1}, step "
                                  f"{self.step}); the checkpoint in {self.checkpoint.folder} holds the state")

    def _state(self, epoch: int, finished: bool, position: dict | None = None) -> dict[str, Any]:
        """Everything needed to continue at the start of 0-based ``epoch`` (or at ``position`` in it)."""
        return {
            "epoch": epoch, "step": self.step, "beta": self.beta, "finished": finished,
            "stop_training": self.stop_training, "history": self.history, "position": position,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "callbacks": [{"class": type(c).__qualname__, "state": c.state_dict()} for c in self.callbacks],
            "rng": _per_rank(rng_state(self.train_loader)),
        }

    def _restore(self, state: dict[str, Any]) -> dict | None:
        """Load a checkpoint's state (after ``on_train_begin``); returns the position inside the epoch, if any."""
        saved = [c["class"] for c in state["callbacks"]]
        ours = [type(c).__qualname__ for c in self.callbacks]
        if saved != ours:
            raise CheckpointMismatchError(f"the checkpoint {self.checkpoint.record} was written with the callbacks "
                                          f"{saved}, this run has {ours}; resume with the same method and settings")
        try:
            load_weights_(self.model, state["model"], source=f"the checkpoint {self.checkpoint.record}")
        except WeightsMismatchError as error:
            raise CheckpointMismatchError(f"{error}: it holds another network than this run's; resume with the same "
                                          "network, method and settings") from None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        for callback, saved_state in zip(self.callbacks, state["callbacks"]):
            callback.load_state_dict(saved_state["state"])
        self.step, self.beta, self.stop_training = state["step"], state["beta"], state["stop_training"]
        self.history = list(state["history"])
        self._resume_rng = _own_rank(state["rng"])
        position = state["position"]
        self.checkpoint.resumed_from = {"phase": self.checkpoint.phase, "epoch": state["epoch"] + 1,
                                        "batch": position["batch"] if position else 0}
        if state["position"] is None:
            set_rng_state(state["rng"], self.train_loader)
        return state["position"]

    def _train_epoch(self, position: dict | None = None) -> dict[str, float]:
        self.model.train()
        if position is None:
            # before iter(): the loader draws its seed there (kept for a mid-epoch checkpoint only)
            epoch_rng = rng_state(self.train_loader) if self.checkpoint is not None else None
            sums, batches, first = torch.zeros(3, dtype=torch.float64), 0, 0
        else:  # replay the epoch's order up to where the checkpoint was taken
            epoch_rng = _own_rank(position["epoch_rng"])
            set_rng_state(epoch_rng, self.train_loader)
            sums, batches, first = position["sums"].clone(), position["batches"], position["batch"]
        iterator = iter(self.train_loader)
        for _ in range(first):
            next(iterator)
        if position is not None:
            set_rng_state(self._resume_rng, self.train_loader)
        # the batches of a long epoch (a CIFAR ResNet's take minutes) show; the bar goes when the epoch ends
        with tqdm(enumerate(iterator, start=first), total=self.steps_per_epoch, initial=first,
                  desc=f"epoch {self.epoch + 1}", unit="batch", leave=False,
                  disable=self.config.quiet or not distributed.is_main()) as progress:
            for batch, item in progress:
                x, y = as_batch(item, "train_loader")
                x, y = x.to(self.device), y.to(self.device)
                self.batch_size = x.shape[0]
                self.beta = self._beta()
                try:
                    loss, nll, kl = self.loss(x, y)
                except RuntimeError as error:  # a network that converts its inputs itself takes any float type
                    if x.is_floating_point() and self._dtype is not None and x.dtype != self._dtype:
                        raise ValueError(f"train_loader gives {str(x.dtype).removeprefix('torch.')} inputs to a "
                                         f"network of {str(self._dtype).removeprefix('torch.')} weights, which "
                                         f"failed ({error}): convert them (x.float() in the dataset, or in a "
                                         "collate_fn)") from error
                    raise
                # the three on the host in one copy: on a GPU each .item() is a wait of its own
                values = torch.stack([loss.detach(), nll.detach(), kl.detach()]).to("cpu", torch.float64)
                if not torch.isfinite(values[0]):
                    raise NonFiniteLossError(
                        f"training loss is {values[0].item()} at epoch {self.epoch + 1}, batch {batch + 1} "
                        f"(NLL {values[1].item():.4g}, KL {values[2].item():.4g}){_culprits(self.model, x, kl)}; "
                        f"lower the learning rate (now {self.config.lr}) or check the inputs for NaN/Inf. The model "
                        "keeps its last finite weights"
                        + (" and the checkpoint its last good epoch" if self.checkpoint is not None else "") + "."
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.skip_step = False
                self._emit("on_after_backward")
                if not self.skip_step:
                    self.optimizer.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                self.step += 1
                batches += 1
                sums += values
                self._emit("on_batch_end", batch, float(values[0]))
                if self.stop_training:
                    break
                if batch + 1 < self.steps_per_epoch and self._stop_requested():
                    self.checkpoint.save(self._state(self.epoch, False, {
                        "batch": batch + 1, "batches": batches, "sums": sums, "epoch_rng": _per_rank(epoch_rng)}))
                    self._raise_interrupted(f"after batch {batch + 1}")
        if batches > self.steps_per_epoch and not self._told_batches:
            self._told_batches = True  # the schedule and the progress count on len(); said once
            warnings.warn(f"train_loader gave {batches} batches in epoch {self.epoch + 1} where its len() says "
                          f"{self.steps_per_epoch} (an IterableDataset whose length is an estimate, or its workers "
                          "each yielding the whole stream): the learning-rate schedule and KL warm-up end early; give "
                          "it a __len__ that counts its batches, or shard it across workers", stacklevel=2)
        mean = (sums / max(batches, 1)).tolist()
        return {"epoch": self.epoch + 1, "loss": mean[0], "nll": mean[1], "kl": mean[2], "beta": self.beta}


def fit(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    config: TrainConfig | None = None,
    callbacks: Sequence[Callback] = (),
    n_train: int | None = None,
    checkpoint: PhaseCheckpoint | None = None,
    teacher: nn.Module | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` by minimising ``mean NLL + beta * KL / N_train`` with Adam.

    A model without Bayesian layers trains by plain maximum likelihood (the KL is zero), which is how
    ``bayescompress pretrain`` uses it. After every epoch the priors' closed-form updates run, then the
    validation metrics are computed, then the callbacks' ``on_epoch_end``.

    Parameters
    ----------
    model: the network, trained in place.
    train_loader: iterable of (x, y) batches; ``len()`` must work.
    val_loader: optional iterable of (x, y) batches for per-epoch metrics.
    config: :class:`TrainConfig`.
    callbacks: :class:`Callback` objects, called in order.
    n_train: training-set size N; by default ``len(train_loader.dataset)``, or for a list of (x, y) batches the
        examples it holds.
    checkpoint: where to keep the run's state every epoch, and to continue from (see :class:`Trainer`).
    teacher: a fixed network whose predicted probabilities enter the targets with weight ``config.distill``.

    Returns
    -------
    One record per epoch: loss, nll (the labels' cross-entropy, also when distilling), kl, beta and ``val_*`` metrics.

    Example
    -------
    >>> from bayescompress.nn import bayesianize_
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> loader = [(x[:32], y[:32]), (x[32:], y[32:])]
    >>> net = bayesianize_(nn.Sequential(nn.Linear(4, 2)))
    >>> history = fit(net, loader, config=TrainConfig(epochs=2, quiet=True), n_train=64)
    >>> len(history)
    2
    """
    return Trainer(model, train_loader, val_loader, config, callbacks, n_train, checkpoint, teacher).fit()


def _per_rank(rng: dict[str, Any]) -> dict[str, Any]:
    """``rng`` with the torch state of every rank (each draws its own noise); others are the same everywhere."""
    return {**rng, "torch": distributed.gather(rng["torch"])}


def _own_rank(rng: dict[str, Any]) -> dict[str, Any]:
    """This rank's part of a :func:`_per_rank` state; a checkpoint of another number of processes is refused."""
    states = rng["torch"]
    if states.shape[0] != distributed.world_size():
        raise CheckpointMismatchError(f"the checkpoint was written by {states.shape[0]} processes, this run has "
                                      f"{distributed.world_size()}; resume with as many")
    return {**rng, "torch": states[distributed.rank()].clone()}  # set_rng_state misreads a view at an offset


def _parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Four optimiser groups: the posterior means (and any deterministic parameter) at ``lr``, the posterior
    rho at ``rho_lr``, the priors' variational parameters at ``prior_lr`` except the input gates' logits, at
    ``input_gate_lr`` (empty groups are left out)."""
    layers = [layer for _, layer in bayesian_layers(model)]
    inputs = {id(layer.prior.input_gate_logit) for layer in layers
              if getattr(layer.prior, "input_gate_logit", None) is not None}
    prior = {id(p) for layer in layers for p in layer.prior.parameters()} - inputs
    rho = {id(p) for layer in layers for p in (layer.weight_rho, layer.bias_rho) if p is not None}
    params = list(model.parameters())
    prior_lr = config.prior_lr or config.lr
    special = prior | inputs | rho
    groups = [
        {"params": [p for p in params if id(p) not in special]},
        {"params": [p for p in params if id(p) in rho], "lr": config.rho_lr or config.lr},
        {"params": [p for p in params if id(p) in prior], "lr": prior_lr},
        {"params": [p for p in params if id(p) in inputs], "lr": config.input_gate_lr or prior_lr},
    ]
    return [group for group in groups if group["params"]]


def _scheduler(optimizer: torch.optim.Optimizer, schedule: str,
               total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if schedule == "linear":
        # floored at 0: a loader whose len() undercounts its batches would otherwise turn the steps into ascent
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total_steps))
    return None


def _fused_adam_supported(device: torch.device) -> bool:
    probe = torch.zeros(1, device=device, requires_grad=True)
    try:
        torch.optim.Adam([probe], fused=True)
    except (RuntimeError, ValueError):
        return False
    return True


def _dataset_size(loader: Iterable) -> int:
    """N of the ELBO's KL / N: the loader's dataset's length (the indices of a ``SubsetRandomSampler`` over it, the
    usual way to split one dataset), or the examples a list (tuple) of (x, y) batches holds. Anything else must say
    (``n_train``): a wrapper of a distributed loader, say, would count one rank's share, and an iterator would be
    used up by the counting."""
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and batches_per_epoch(loader) is None:  # an IterableDataset without a length
        raise ValueError(f"cannot train on a DataLoader over a {type(dataset).__name__} without a length: epochs, "
                         "the learning-rate schedule and the KL's N need it; give the dataset a __len__ (its "
                         "examples per epoch)")
    if dataset is not None:
        sampler = index_sampler(loader)
        if isinstance(sampler, SubsetRandomSampler):  # one dataset split by index lists: train only draws its own
            return len(sampler)
        return len(dataset)
    if isinstance(loader, (list, tuple)):
        return sum(len(batch[0]) for batch in loader)
    if iter(loader) is loader or not hasattr(loader, "__len__"):  # epochs need a length and a second pass
        raise ValueError(f"cannot train on a {type(loader).__name__}, which has no length or is used up after one "
                         "pass; give a DataLoader or a list of (x, y) batches")
    raise ValueError(f"cannot tell the training-set size of a {type(loader).__name__} without .dataset; give a "
                     "DataLoader or a list of (x, y) batches, or pass n_train=N to fit / Trainer")


__all__ = ["Callback", "CheckpointMismatchError", "NonFiniteLossError", "TrainConfig", "Trainer", "TrainingInterrupted",
           "fit"]
