"""Methods found by name: ``register`` a :class:`~bayescompress.methods.base.Method` subclass under its ``name``,
``get`` it back. The built-in methods register themselves in :mod:`bayescompress.methods`; a method of your
own is one ``register(MyMethod)`` away (docs/design.md)."""

from __future__ import annotations

_METHODS: dict[str, type] = {}


def register(method: type) -> type:
    """Add ``method`` (a Method subclass with a ``name``) to the registry; usable as a class decorator.

    Raises ``ValueError`` when the name is taken: registering twice under one name would silently make one
    of the two unreachable.
    """
    name = getattr(method, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{method.__qualname__} has no name: give the class a name = '...' attribute")
    if name in _METHODS and _METHODS[name] is not method:
        owner = _METHODS[name]
        raise ValueError(f"a method named {name!r} is already registered ({owner.__module__}.{owner.__qualname__}); "
                         f"give {method.__qualname__} another name, or unregister({name!r}) first")
    _METHODS[name] = method
    return method


def unregister(name: str) -> None:
    """Remove the method registered as ``name`` (an unknown name is an error)."""
    get(name)
    del _METHODS[name]


def get(name: str) -> type:
    """The method class registered as ``name``; an unknown name lists the registered ones."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(names())}")
    return _METHODS[name]


def names() -> tuple[str, ...]:
    """The registered methods' names, in registration order."""
    return tuple(_METHODS)


def owners(setting: str) -> list[str]:
    """The registered methods whose config has a setting called ``setting``."""
    return [name for name, method in _METHODS.items() if setting in method.config_class.names()]


__all__ = ["get", "names", "owners", "register", "unregister"]
