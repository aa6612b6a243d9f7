"""Shared bits of the benchmark scripts: where MNIST is, machine description, JSON output."""

from __future__ import annotations

import ast
import datetime
import os
import platform
from pathlib import Path

import torch

from bayescompress.io import write_json

ROOT = Path(__file__).resolve().parent
DEFAULT_MNIST = ROOT.parent.parent / "shared" / "data" / "mnist"
RESULTS = ROOT / "results"


def machine() -> dict:
    """What the figures were measured on."""
    return {
        "date": datetime.date.today().isoformat(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }


def parse_settings(items: list[str]) -> dict:
    """``["pi0=0.01", "mrf_graph=grid"]`` -> {"pi0": 0.01, "mrf_graph": "grid"}: method settings from the command
    line (values are Python literals; anything else is taken as a string). The method checks the names."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"expected SETTING=VALUE; got {item!r}")
        try:
            settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[key] = value
    return settings


def save_results(name: str, payload: dict) -> Path:
    """Write ``results/<name>.json`` atomically with the machine record attached."""
    return write_json(RESULTS / f"{name}.json", {"machine": machine(), **payload})
