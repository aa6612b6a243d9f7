"""Regenerate docs/api.md from the docstrings of the public API: python docs/api_reference.py

Every name in ``__all__`` of the modules below gets its signature and the first paragraph of its docstring
(classes: also their public methods), so the reference cannot drift from the code (a test checks it is current).
"""

import importlib
import inspect
from pathlib import Path

PAGE = Path(__file__).with_name("api.md")
MODULES = ("bayescompress", "bayescompress.compare", "bayescompress.operating_points", "bayescompress.plot",
           "bayescompress.methods", "bayescompress.priors", "bayescompress.nn", "bayescompress.inference",
           "bayescompress.pruning", "bayescompress.metrics", "bayescompress.data", "bayescompress.workflows")


def _summary(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip() or "(no docstring)"


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj)).replace(" -> None", "")
    except (TypeError, ValueError):
        return ""


def _owner(obj) -> str:
    return getattr(obj, "__module__", "") or ""


def reference() -> str:
    lines = ["# API reference", "",
             "Generated from the docstrings by `python docs/api_reference.py`; the first paragraph of each. "
             "Names are listed once, under the first module below that exports them.", ""]
    seen: set[int] = set()
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        names = [n for n in getattr(module, "__all__", []) if id(getattr(module, n)) not in seen]
        objects = [(n, getattr(module, n)) for n in names]
        objects = [(n, o) for n, o in objects if inspect.isclass(o) or inspect.isfunction(o)]
        if not objects:
            continue
        lines += [f"## `{module_name}`", "", _summary(module), ""]
        for name, obj in objects:
            seen.add(id(obj))
            kind = "class" if inspect.isclass(obj) else "def"
            lines += [f"### `{kind} {name}{_signature(obj)}`", "", f"*{_owner(obj)}*. {_summary(obj)}", ""]
            if inspect.isclass(obj):
                for attr, member in sorted(vars(obj).items()):
                    if attr.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                        continue
                    if any(attr in vars(base) for base in obj.__mro__[1:]):  # an override: the base documents it
                        continue
                    target = member.fget if isinstance(member, property) else member
                    signature = "" if isinstance(member, property) else _signature(member)
                    lines.append(f"- `{attr}{signature}`: {_summary(target)}")
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    PAGE.write_text(reference())
    print(f"wrote {PAGE}")
