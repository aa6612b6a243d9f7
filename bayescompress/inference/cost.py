"""The analytic training cost of a run: multiply-accumulates per step, summed over every training phase."""

from __future__ import annotations

import torch
from torch import Tensor

from bayescompress.inference.train import Callback, Trainer
from bayescompress.metrics import training_macs_per_example, weight_uses
from bayescompress.nn.model import execution_order, handled_layers


class TrainingCost(Callback):
    """Counts the training MACs of every step of every ``fit`` it is passed to
    (:func:`~bayescompress.metrics.training_macs_per_example` times the batch size, with the masks of that
    step), and beside them those of dense VI on the same network over the same batches.

    ``example`` is one input, for the layers' output sizes and the first layer (whose input needs no
    gradient). After training: ``macs``, ``dense_vi_macs``, ``steps``, and :attr:`ratio`
    (``macs / dense_vi_macs``).

    Example
    -------
    >>> cost = TrainingCost(x[:1])                                 # doctest: +SKIP
    >>> fit(net, train, val, config, callbacks=[cost]); cost.ratio   # doctest: +SKIP
    """

    def __init__(self, example: Tensor) -> None:
        self.example = example[:1]
        self.macs = 0
        self.dense_vi_macs = 0
        self.steps = 0
        self._dense_per_example: int | None = None

    @torch.no_grad()
    def on_train_begin(self, trainer: Trainer) -> None:
        model = trainer.model
        # per fit: a method may have converted or replaced layers since the last one
        self._layers = dict(handled_layers(model))
        self._positions = weight_uses(model, self._layers.items(), self.example.to(trainer.device))
        self._layers = {name: layer for name, layer in self._layers.items() if name in self._positions}  # layers run
        self._first = execution_order(model, self.example.to(trainer.device))[0]
        self._versions: tuple | None = None
        if self._dense_per_example is None:  # dense VI on the network the run started from
            self._dense_per_example = training_macs_per_example(self._layers, self._positions, self._first,
                                                                dense=True)

    def _per_example(self) -> int:
        # counting kept weights reads every mask; recount only when one was written (SSVI's updates)
        versions = tuple(-1 if (mask := getattr(layer, "weight_mask", None)) is None else mask._version
                         for layer in self._layers.values())
        if versions != self._versions:
            self._versions = versions
            self._cached = training_macs_per_example(self._layers, self._positions, self._first)
        return self._cached

    def on_batch_end(self, trainer: Trainer, batch: int, loss: float) -> None:
        per_example = self._per_example()
        self.macs += per_example * trainer.batch_size
        self.dense_vi_macs += self._dense_per_example * trainer.batch_size
        self.steps += 1

    def state_dict(self) -> dict:
        return {"macs": self.macs, "dense_vi_macs": self.dense_vi_macs, "steps": self.steps,
                "dense_per_example": self._dense_per_example}

    def load_state_dict(self, state: dict) -> None:
        self.macs, self.dense_vi_macs, self.steps = state["macs"], state["dense_vi_macs"], state["steps"]
        self._dense_per_example = state["dense_per_example"]

    @property
    def ratio(self) -> float:
        """Training MACs over dense VI's on the same batches (NaN before any step)."""
        return self.macs / self.dense_vi_macs if self.dense_vi_macs else float("nan")
