"""Early stopping on a validation-accuracy budget: model selection for the pruning phase of spike-and-slab VI."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from bayescompress._validation import check_in_range, check_positive_int
from bayescompress.inference.train import Callback, Trainer
from bayescompress.metrics import evaluate


class EarlyStopping(Callback):
    """Ends training once the validation accuracy falls more than ``max_drop`` below its value at the start,
    and puts back the last state that was still within that budget.

    While spike-and-slab VI trains, the gates keep switching units off, trading accuracy for compression: the
    last state within the budget is the most compressed network found that the budget allows. Accuracy is
    that of the posterior-mean network on ``val_loader`` (point gates, i.e. exactly the units that pruning at
    inclusion probability < 1/2 keeps), measured before the first step and then ``checks_per_epoch`` times
    per epoch, on evenly spaced batches, the epoch's last batch included. The starting state always counts
    as within the budget, so the restored state is never worse than the untrained one. Each check runs on a
    forked random-number state (iterating a ``DataLoader`` draws a seed even without shuffling), so up to the
    stop the run is exactly the one without this callback, and a run that never stops is that run. Put it
    last among the callbacks: its starting state is then the one the others set up (e.g. SSVI's subspace),
    and, as ``on_train_end`` runs in reverse order, a restored state is what the others' ``on_train_end``
    sees (e.g. Turbo-VBI's last module A update).

    After training: ``reference_accuracy`` (the starting accuracy), ``checks`` (one ``(step, accuracy)``
    pair per check), ``kept_step`` (the global step of the restored state; 0 = the starting state) and
    ``stopped`` (whether the budget was exceeded). Each epoch record gains ``early_stopping/kept_step``; the
    rest of the last record (and e.g. ``GateMonitor``'s counts) describes the state training stopped in, not
    the restored one.

    Example
    -------
    >>> stop = EarlyStopping(val_loader, max_drop=0.005)                 # doctest: +SKIP
    >>> fit(net, train_loader, val_loader, config, callbacks=[stop])    # doctest: +SKIP
    """

    def __init__(self, val_loader: Iterable, max_drop: float, checks_per_epoch: int = 1) -> None:
        check_in_range("max_drop", max_drop, 0.0, 1.0)
        check_positive_int("checks_per_epoch", checks_per_epoch)
        self.val_loader = val_loader
        self.max_drop = float(max_drop)
        self.checks_per_epoch = checks_per_epoch
        self.reference_accuracy = float("nan")
        self.checks: list[tuple[int, float]] = []
        self.kept_step = 0
        self.stopped = False
        self._kept: dict[str, Tensor] = {}
        self._check_batches: set[int] = set()

    def _accuracy(self, trainer: Trainer) -> float:
        devices = [trainer.device.index or 0] if trainer.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return evaluate(trainer.model, self.val_loader, samples=0, device=trainer.device)["accuracy"]

    def _keep(self, trainer: Trainer) -> None:
        self._kept = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        self.kept_step = trainer.step

    def on_train_begin(self, trainer: Trainer) -> None:
        n = trainer.steps_per_epoch
        # batch indices (0-based) after which to check: ceil(i n / k) - 1 for i = 1..k, so the last is n - 1
        self._check_batches = {-(-i * n // self.checks_per_epoch) - 1 for i in range(1, self.checks_per_epoch + 1)}
        self.reference_accuracy = self._accuracy(trainer)
        self.checks, self.stopped = [(0, self.reference_accuracy)], False
        self._keep(trainer)

    def on_batch_end(self, trainer: Trainer, batch: int, loss: float) -> None:
        if batch not in self._check_batches:
            return
        accuracy = self._accuracy(trainer)
        self.checks.append((trainer.step, accuracy))
        if accuracy >= self.reference_accuracy - self.max_drop:
            self._keep(trainer)
        else:
            self.stopped = True
            trainer.stop_training = True

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, float]) -> None:
        record["early_stopping/kept_step"] = self.kept_step

    def state_dict(self) -> dict:
        return {"reference_accuracy": self.reference_accuracy, "checks": [list(c) for c in self.checks],
                "kept_step": self.kept_step, "stopped": self.stopped, "kept": self._kept}

    def load_state_dict(self, state: dict) -> None:
        self.reference_accuracy, self.kept_step, self.stopped = (state["reference_accuracy"], state["kept_step"],
                                                                  state["stopped"])
        self.checks = [tuple(c) for c in state["checks"]]
        self._kept = {k: v.clone() for k, v in state["kept"].items()}

    @torch.no_grad()
    def on_train_end(self, trainer: Trainer) -> None:
        if self.stopped:  # otherwise the kept state is the last batch's, and the end-of-epoch updates stand
            trainer.model.load_state_dict(self._kept)
