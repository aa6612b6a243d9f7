"""Your own architecture on the command line: --model package.module:factory or path/to/file.py:factory, found
as `python -m bayescompress` finds it, recorded so the run rebuilds from any directory, and clear errors."""

import json
import sys

import pytest
import torch

from bayescompress.cli import main
from bayescompress.io import save_weights
from bayescompress.runs import load

# a residual network: its run folder is rebuilt from the factory (a sequential one would not need it)
RESIDUAL_NET = (
    "import torch.nn as nn\n"
    "class Net(nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.body = nn.Linear(64, 24)\n"
    "        self.fc = nn.Linear(24, 10)\n"
    "    def forward(self, x):\n"
    "        h = self.body(x.flatten(1)).relu()\n"
    "        return self.fc(h + h.relu())\n"
    "def build():\n"
    "    return Net()\n"
)
QUICK = ["--method", "magnitude", "--keep-fraction", "0.5", "--finetune-epochs", "0", "--quiet"]


@pytest.fixture
def in_tmp_path(tmp_path, monkeypatch):
    """tmp_path as the working directory and not on sys.path (as under the installed console script); the
    modules the test imports from it are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", str(tmp_path))])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if getattr(sys.modules[name], "__file__", None) and str(tmp_path) in sys.modules[name].__file__:
            del sys.modules[name]


def _weights(folder, source=RESIDUAL_NET):
    """Weights of the network ``source``'s build() makes, written into ``folder``; their path."""
    namespace = {}
    exec(source, namespace)
    save_weights(namespace["build"]().state_dict(), folder / "w.safetensors")
    return folder / "w.safetensors"


def test_a_factory_module_in_the_working_directory_is_found_as_python_m_finds_it(in_tmp_path, capsys):
    (in_tmp_path / "cwd_net.py").write_text(RESIDUAL_NET)
    weights = _weights(in_tmp_path)
    assert main(["compress", "--model", "cwd_net:build", "--weights", str(weights), "--out", "run", *QUICK]) == 0, \
        capsys.readouterr().err
    assert load("run").architecture["source"] == {"kind": "factory", "spec": "cwd_net:build"}


def test_a_factory_file_is_recorded_by_its_absolute_path_so_the_run_rebuilds_from_another_directory(
        in_tmp_path, monkeypatch, capsys):
    (in_tmp_path / "nets").mkdir()
    (in_tmp_path / "nets" / "file_net.py").write_text(RESIDUAL_NET)
    weights = _weights(in_tmp_path)
    assert main(["compress", "--model", "./nets/file_net.py:build", "--weights", str(weights), "--out", "run",
                 *QUICK]) == 0, capsys.readouterr().err
    spec = f"{(in_tmp_path / 'nets' / 'file_net.py').resolve()}:build"
    assert json.loads((in_tmp_path / "run" / "architecture.json").read_text())["source"] == \
        {"kind": "factory", "spec": spec}
    elsewhere = in_tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = load(in_tmp_path / "run")  # the graph export is rebuilt by calling the recorded factory
    assert run.model.fc.out_features == 10
    probe = torch.randn(2, 64)
    assert run.model(probe).shape == (2, 10)


def test_a_factory_file_imports_the_modules_beside_it_when_run_from_its_folder(in_tmp_path, capsys):
    (in_tmp_path / "sibling_blocks.py").write_text(RESIDUAL_NET)
    (in_tmp_path / "uses_blocks.py").write_text("from sibling_blocks import Net\ndef build():\n    return Net()\n")
    weights = _weights(in_tmp_path)
    assert main(["compress", "--model", "uses_blocks.py:build", "--weights", str(weights), "--out", "run",
                 *QUICK]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("spec, files, message", [
    # the module is not importable: the message says how to make it so
    ("absent_net:build", {}, "No module named 'absent_net'; to make absent_net importable, run from the folder "
                             "that holds it, add that folder to PYTHONPATH, or give the file instead: "
                             "path/to/absent_net.py:build"),
    # a module the factory's module imports is missing: not the same advice
    ("needs_dep.py:build", {"needs_dep.py": "import no_such_dependency_xyz\ndef build(): pass\n"},
     "No module named 'no_such_dependency_xyz'; the factory's module imports no_such_dependency_xyz: install it"),
    # importlib's TypeError for a relative module name was a raw traceback
    (".relative_net:build", {}, "TypeError: the 'package' argument is required to perform a relative import"),
    ("broken_syntax.py:build", {"broken_syntax.py": "def build(:\n"}, "SyntaxError: invalid syntax"),
    ("raises_on_import.py:build", {"raises_on_import.py": "raise KeyError('config')\n"}, "KeyError: 'config'"),
    ("no_factory.py:nope", {"no_factory.py": "def build(): pass\n"}, "no_factory.py defines no 'nope'"),
    ("missing.py:build", {}, "missing.py does not exist"),
    ("nets/missing:build", {}, "a file is written path/to/file.py:factory, a module package.module:factory"),
])
def test_a_factory_that_cannot_be_loaded_exits_2_with_one_clear_line_and_leaves_no_run(
        in_tmp_path, capsys, spec, files, message):
    for name, code in files.items():
        (in_tmp_path / name).write_text(code)
    weights = _weights(in_tmp_path)
    assert main(["compress", "--model", spec, "--weights", str(weights), "--out", "run", *QUICK]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bayescompress compress: error: cannot load the model factory ")
    assert message in err[0]
    assert not (in_tmp_path / "run").exists()
