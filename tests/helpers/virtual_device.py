"""A stand-in accelerator for machines without one, for tests of the code paths a CUDA run takes.

Tensors moved to the ``meta`` device inside :class:`VirtualDevice` are CPU tensors wrapped so that they report
``device='meta'``; every operation runs on the wrapped CPU data. An operation that combines such a tensor with a
CPU tensor of one or more dimensions raises :class:`DeviceMixError`, as CUDA raises "Expected all tensors to be
on the same device" (0-dim CPU tensors, CPU index tensors and copies between devices are allowed there too).
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

DEVICE = torch.device("meta")
# operations CUDA also lets a CPU tensor take part in
_ALLOWED = {"copy_", "_to_copy", "index", "index_put_", "index_put", "_index_put_impl_", "lift_fresh", "detach",
            "alias", "_has_compatible_shallow_copy_type", "set_"}


class DeviceMixError(RuntimeError):
    """A CPU tensor met a tensor on the (virtual) device in one operation."""


class Elsewhere(torch.Tensor):
    """A CPU tensor that reports the virtual device."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        wrapper = torch.Tensor._make_wrapper_subclass(cls, elem.size(), strides=elem.stride(),
                                                      storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                      layout=elem.layout, device=DEVICE,
                                                      requires_grad=elem.requires_grad)
        wrapper.elem = elem
        return wrapper

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError("an Elsewhere tensor is used outside a VirtualDevice")

    def tolist(self):
        return self.elem.tolist()

    @property
    def is_meta(self) -> bool:  # not torch's data-less meta tensors: load_state_dict copies into these
        return False


def _unwrap(value):
    if isinstance(value, Elsewhere):
        return value.elem
    if isinstance(value, torch.device) and value.type == DEVICE.type:
        return torch.device("cpu")
    return value


class _Dispatch(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        flat, _ = tree_flatten((args, kwargs))
        elsewhere = [t for t in flat if isinstance(t, Elsewhere)]
        cpu = [t for t in flat if type(t) is torch.Tensor and t.dim() > 0 and t.device.type == "cpu"]
        if elsewhere and cpu and name not in _ALLOWED:
            raise DeviceMixError(f"{func} combines a tensor on the device with a CPU tensor of shape "
                                 f"{tuple(cpu[0].shape)}")
        to_device = kwargs.get("device")
        to_device = None if to_device is None else torch.device(to_device).type
        if name == "_to_copy":
            plain = {k: v for k, v in kwargs.items() if k not in ("device", "non_blocking")}
            out = func(_unwrap(args[0]), **plain)
            return Elsewhere(out) if to_device == DEVICE.type or (to_device is None and elsewhere) else out
        if name == "copy_":
            target, source = args[0], args[1]
            _unwrap(target).copy_(_unwrap(source), *args[2:])
            return target
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        if not elsewhere and to_device != DEVICE.type:
            return out
        inputs = {id(t.elem): t for t in elsewhere}

        def wrap(value):
            if type(value) is not torch.Tensor:
                return value
            same = inputs.get(id(value))  # an in-place result is its input
            return same if same is not None else Elsewhere(value)

        return tree_map(wrap, out)


class _Factories(TorchFunctionMode):
    """``torch.tensor(..., device=meta)`` makes a real meta tensor below the dispatch mode: made on the CPU and
    moved instead."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None and \
                torch.device(kwargs["device"]).type == DEVICE.type:
            return func(*args, **{**kwargs, "device": "cpu"}).to(DEVICE)
        return func(*args, **kwargs)


class VirtualDevice:
    """``with VirtualDevice():`` the ``meta`` device behaves as an accelerator whose tensors CPU tensors may not
    meet."""

    def __enter__(self) -> VirtualDevice:
        self._modes = [_Factories(), _Dispatch()]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
