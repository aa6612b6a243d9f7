"""Checkpoints of a training run: everything :class:`~bayescompress.inference.Trainer` needs to continue
exactly where it stopped, written atomically as safetensors (the tensors) + JSON (everything else).

A run of a method is a sequence of ``fit`` calls (its *phases*: training before pruning, fine-tuning); each
phase keeps its own last good checkpoint, ``phase-<k>.json`` naming ``phase-<k>.<serial>.safetensors``. The JSON
is written last, by an atomic rename, so it is the commit point: a process killed at any moment leaves the
previous pair readable, and the next save removes the tensors no JSON names any more.

Nothing here unpickles: nested states (optimizer, scheduler, callbacks, random-number generators) are split
into a flat mapping of tensors and a JSON tree that refers to them (:func:`split_state`, :func:`join_state`).
"""

from __future__ import annotations

import json
import os
import random
import socket
import uuid
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bayescompress.io import FORMAT_VERSION, read_json_record, read_safetensors, save_weights, write_json

_TENSOR = "__tensor__"
_ITEMS = "__items__"  # a dict whose keys are not all strings (an optimizer's state is keyed by int)
_TUPLE = "__tuple__"
_NDARRAY = "__ndarray__"  # numpy's random state


def split_state(state: Any) -> tuple[dict[str, Tensor], Any]:
    """``state`` (nested dicts, lists, tuples, tensors, numbers, strings, None) as (tensors, JSON tree)."""
    tensors: dict[str, Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, Tensor):
            tensors[path] = value.detach()
            return {_TENSOR: path}
        if isinstance(value, dict):
            if all(isinstance(key, str) for key in value):
                return {key: walk(item, f"{path}/{key}") for key, item in value.items()}
            return {_ITEMS: [[key, walk(item, f"{path}/{index}")] for index, (key, item) in enumerate(value.items())]}
        if isinstance(value, tuple):
            return {_TUPLE: [walk(item, f"{path}/{index}") for index, item in enumerate(value)]}
        if isinstance(value, list):
            return [walk(item, f"{path}/{index}") for index, item in enumerate(value)]
        if isinstance(value, np.ndarray):
            return {_NDARRAY: value.tolist(), "dtype": str(value.dtype)}
        if isinstance(value, (np.integer, np.floating)):
            return value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"cannot checkpoint a {type(value).__name__} at {path or '/'}; a callback's state_dict() "
                        "holds tensors, numbers, strings, lists and dicts only")

    return tensors, walk(state, "")


def join_state(tensors: dict[str, Tensor], tree: Any) -> Any:
    """The inverse of :func:`split_state`."""
    if isinstance(tree, list):
        return [join_state(tensors, item) for item in tree]
    if not isinstance(tree, dict):
        return tree
    if _TENSOR in tree:
        return tensors[tree[_TENSOR]]
    if _ITEMS in tree:
        return {key: join_state(tensors, item) for key, item in tree[_ITEMS]}
    if _NDARRAY in tree:
        return np.asarray(tree[_NDARRAY], dtype=tree["dtype"])
    if _TUPLE in tree:
        return tuple(join_state(tensors, item) for item in tree[_TUPLE])
    return {key: join_state(tensors, item) for key, item in tree.items()}


def shuffling_generators(loader: Iterable) -> list[torch.Generator]:
    """The torch generators that decide ``loader``'s order (its own, its sampler's, its batch sampler's)."""
    found: list[torch.Generator] = []
    for holder in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                   getattr(getattr(loader, "sampler", None), "sampler", None),
                   getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        generator = getattr(holder, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def rng_state(loader: Iterable | None = None) -> dict[str, Any]:
    """Every random-number state a run draws from: torch (CPU and, when present, CUDA), numpy, Python's
    ``random``, and the generators of ``loader``'s order."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "loader": [g.get_state() for g in shuffling_generators(loader)] if loader is not None else [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], loader: Iterable | None = None) -> None:
    """Put back what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    generators = shuffling_generators(loader) if loader is not None else []
    if len(generators) != len(state["loader"]):
        raise ValueError(f"the checkpoint holds the order of a training loader with {len(state['loader'])} "
                         f"shuffling generators, this loader has {len(generators)}; resume with the same data")
    for generator, saved in zip(generators, state["loader"]):
        generator.set_state(saved)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class PhaseCheckpoint:
    """The last good checkpoint of one training phase in ``folder`` (see the module docstring).

    ``writer`` is False on the ranks of a distributed run other than 0: they read the checkpoint, never write it.
    """

    def __init__(self, folder: str | os.PathLike, phase: int, writer: bool = True) -> None:
        self.folder, self.phase, self.writer = Path(folder), phase, writer
        self.record = self.folder / f"phase-{phase}.json"
        # set by the Trainer that continued from this checkpoint: {"phase", "epoch", "batch"} (1-based epoch)
        self.resumed_from: dict | None = None

    def _tensors_file(self, serial: int) -> Path:
        return self.folder / f"phase-{self.phase}.{serial}.safetensors"

    def exists(self) -> bool:
        return self.record.is_file()

    def load(self) -> Any | None:
        """The saved state, or None when this phase has no checkpoint yet."""
        if not self.exists():
            return None
        record = read_json_record(self.record, f"checkpoint of training phase {self.phase}")
        tensors = read_safetensors(self._tensors_file(record["serial"]), f"checkpoint of training phase {self.phase}")
        return join_state(tensors, record["state"])

    def save(self, state: Any) -> None:
        """Write ``state`` as the phase's checkpoint; the previous one stays until the new one is complete."""
        if not self.writer:
            return
        tensors, tree = split_state(state)
        previous = read_json_record(self.record, "checkpoint")["serial"] if self.exists() else -1
        serial = previous + 1
        save_weights(tensors, self._tensors_file(serial))
        write_json(self.record, {"format_version": FORMAT_VERSION, "phase": self.phase, "serial": serial,
                                 "state": tree})
        for stale in self.folder.glob(f"phase-{self.phase}.*.safetensors"):
            if stale.name != self._tensors_file(serial).name:
                stale.unlink(missing_ok=True)
        # left by a process killed mid-write (ours, and the safetensors writer's own temporary files)
        for partial in [*self.folder.glob(f".phase-{self.phase}.*.tmp"), *self.folder.glob(".tmp*")]:
            partial.unlink(missing_ok=True)


# who trains into a checkpoint folder now: {"pid", "host"}; a dot-file, so the folder's checks pass it by
OWNER_FILE = ".owner.json"


class Checkpoint:
    """A run's checkpoint folder: one :class:`PhaseCheckpoint` per ``fit`` of the run, handed out in order by
    :meth:`next_phase`. The writer claims the folder while this object lives, so a second process (a ``--resume``
    started while the run still trains) is refused rather than training the same run beside it."""

    def __init__(self, folder: str | os.PathLike, writer: bool = True) -> None:
        self.folder = Path(folder)
        self.writer = writer
        self.handed: list[PhaseCheckpoint] = []
        if writer:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._claim()

    def _claim(self) -> None:
        me = claim(self.folder)
        weakref.finalize(self, _release, self.folder / OWNER_FILE, me)  # when the run is done with its checkpoint

    def next_phase(self) -> PhaseCheckpoint:
        phase = PhaseCheckpoint(self.folder, len(self.handed), self.writer)
        self.handed.append(phase)
        return phase

    def resumed_from(self) -> dict | None:
        """Where this run continued from a checkpoint (its last resumed phase), or None for a fresh run."""
        return next((p.resumed_from for p in reversed(self.handed) if p.resumed_from is not None), None)


def claim(folder: str | os.PathLike) -> dict:
    """Mark the checkpoint ``folder`` as trained by this process (refused when another live process holds it),
    so a second command on the same run is told so; returns the claim. A claim outlives nothing: one whose
    process is gone is no bar, and :class:`Checkpoint` releases its own."""
    check_unclaimed(folder)
    Path(folder).mkdir(parents=True, exist_ok=True)
    # the nonce: another Checkpoint of this process, done sooner, must not release this one's claim
    me = {"pid": os.getpid(), "host": socket.gethostname(), "nonce": uuid.uuid4().hex}
    write_json(Path(folder) / OWNER_FILE, me)
    return me


def check_unclaimed(folder: str | os.PathLike) -> None:
    """Refuse a checkpoint ``folder`` another live process trains into (this process's own claim is no bar)."""
    path = Path(folder) / OWNER_FILE
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if (isinstance(owner, dict) and (owner.get("pid"), owner.get("host")) != (os.getpid(), socket.gethostname())
            and _alive(owner)):
        raise ValueError(f"the run of {Path(folder).parent} is being trained by another process (pid "
                         f"{owner.get('pid')} on {owner.get('host')}); let it finish, or stop it first (if it is "
                         f"gone, delete {path})")


def _alive(owner: dict) -> bool:
    """Whether the process that claimed a folder still runs (one on another host cannot be asked: it may)."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:  # not a record this package wrote (and kill(-1) means everyone)
        return False
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def release(folder: str | os.PathLike, me: dict) -> None:
    """Give up the claim ``me`` (what :func:`claim` returned) on ``folder``, if it still holds it."""
    _release(Path(folder) / OWNER_FILE, me)


def _release(path: Path, me: dict) -> None:
    try:
        if json.loads(path.read_text()) == me:
            path.unlink()
    except (OSError, ValueError):  # gone with the folder the finished run replaced
        pass


__all__ = ["Checkpoint", "PhaseCheckpoint", "check_unclaimed", "claim", "join_state", "release", "rng_state",
           "set_rng_state", "shuffling_generators", "split_state"]
