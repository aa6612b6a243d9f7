"""Files: atomic writes, weights in safetensors (or torch.save state_dicts read with weights_only=True).

Nothing here unpickles arbitrary objects: safetensors holds raw tensors only, and ``torch.load`` runs with
``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from typing import Any
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


# Version of the JSON records this package writes (pretrained-weight records, run folders); readers refuse newer.
# 2: run folders of any graph (architecture.json "export", probe.safetensors, posterior.safetensors).
FORMAT_VERSION = 2


class WeightsMismatchError(ValueError):
    """A weights file does not fit the model it is loaded into."""


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    A crash or an exception leaves any previous ``path`` untouched and no partial file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        mode = mode_for(path)
        write(tmp)
        os.chmod(tmp, mode)  # after writing (a writer may replace the file): mkstemp's 0600 would hide it
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def mode_for(path: Path, directory: bool = False) -> int:
    """The permissions an ordinary ``open`` or ``mkdir`` would give ``path``: those of what is there already,
    else the default under the user's umask (temporary files and folders are private until renamed into place)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return (0o777 if directory else 0o666) & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (os.umask can only set it: another
    thread's file created in between would get 0)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0)
        os.umask(umask)
        return umask


def write_json(path: str | os.PathLike, data: Mapping) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))


def save_weights(tensors: Mapping[str, Tensor], path: str | os.PathLike,
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Save a state_dict-like mapping as safetensors, atomically (tensors are copied to be contiguous), with
    ``metadata`` (strings) in the file's header."""
    payload = {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}
    header = dict(metadata) if metadata else None
    return atomic_write(path, lambda tmp: save_file(payload, str(tmp), metadata=header))


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read tensors from a ``.safetensors`` file or a state_dict saved with ``torch.save``.

    ``torch.save`` files are read with ``weights_only=True``, which refuses pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return read_safetensors(path, "a weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} is neither a .safetensors file nor a state_dict readable with torch.load(weights_only=True) "
            f"({type(error).__name__}: {error}); save weights with safetensors or torch.save(model.state_dict())"
        ) from error
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return dict(state)


def read_safetensors(path: str | os.PathLike, what: str) -> dict[str, Tensor]:
    """The tensors of a safetensors file, or a clear error when it is missing, truncated or corrupt.

    ``what`` says what the file belongs to, for the message.
    """
    return _read_safetensors(path, what, load_file)


def read_safetensors_with_metadata(path: str | os.PathLike, what: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """:func:`read_safetensors`, and the string metadata in the file's header (empty when it has none)."""

    def read(name: str) -> tuple[dict[str, Tensor], dict[str, str]]:
        with safe_open(name, framework="pt") as opened:
            return {key: opened.get_tensor(key) for key in opened.keys()}, dict(opened.metadata() or {})

    return _read_safetensors(path, what, read)


def _read_safetensors(path: str | os.PathLike, what: str, read: Callable[[str], Any]) -> Any:
    """``read(path)``, or a clear error when the file is missing, truncated or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing ({what})")
    try:
        return read(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"{path} is not a valid safetensors file, truncated or corrupt ({error}); write it again (nothing "
            "in it was loaded, and a .safetensors file never holds a pickle)"
        ) from error


def load_weights_(model: nn.Module, state: Mapping[str, Tensor], *, source: str = "weights") -> nn.Module:
    """Load ``state`` into ``model`` after checking that every name and shape fits.

    Raises :class:`WeightsMismatchError` naming the first tensor that does not fit.
    """
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise WeightsMismatchError(
                f"{source} do not fit the model: tensor {name!r} (shape {tuple(tensor.shape)}) is missing"
            )
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise WeightsMismatchError(
                f"{source} do not fit the model: tensor {name!r} has shape {tuple(state[name].shape)}, "
                f"the model expects {tuple(tensor.shape)}"
            )
    unexpected = [name for name in state if name not in expected]
    if unexpected:
        raise WeightsMismatchError(
            f"{source} do not fit the model: tensor {unexpected[0]!r} is not in the model "
            f"({len(unexpected)} unexpected tensors)"
        )
    model.load_state_dict(dict(state))
    return model


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of ``model``'s state (every tensor's name, dtype, shape and values), as hex: two networks get the
    same fingerprint exactly when their state_dicts are equal."""
    return tensors_fingerprint(model.state_dict())


def tensors_fingerprint(tensors: dict[str, Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and values), as hex: equal exactly when the tensors are."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def file_in_the_way(folder: Path) -> Path | None:
    """The first of ``folder`` and its parents that exists as a file, which would stop a write below it."""
    return next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)


def check_writable(folder: Path) -> None:
    """Refuse, before any work, a ``folder`` nothing can be written into: the first of it and its parents that
    exists must be a writable folder (not read-only, and ours to write)."""
    if (blocking := file_in_the_way(folder)) is not None:
        raise ValueError(f"cannot write into {folder}: {blocking} is a file, not a folder; choose another path")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):  # a read-only file system refuses root too
        raise ValueError(f"cannot write into {folder}: {existing} is not writable (a read-only file system, or no "
                         "permission); choose another path")


def read_json_record(path: str | os.PathLike, what: str) -> dict:
    """Read a JSON record this package wrote, refusing one from a newer format version.

    ``what`` says what the file is, for the message when it is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing ({what})")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not readable JSON ({what}): {error}; the file is damaged") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds a JSON {type(record).__name__}, not a bayescompress record ({what})")
    version = record.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{path} has no valid format version ({version!r}); it was not written by bayescompress "
                         f"({what})")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {version!r}, newer than this bayescompress reads ({FORMAT_VERSION}); "
            "upgrade bayescompress to load it"
        )
    return record
