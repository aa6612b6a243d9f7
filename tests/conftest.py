import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def digits_mlp_weights(tmp_path_factory):
    """A digits MLP pretrained by the command line, for the tests that start bayescompress as a subprocess."""
    import os
    import subprocess
    import sys

    path = tmp_path_factory.mktemp("weights") / "mlp.safetensors"
    subprocess.run([sys.executable, "-m", "bayescompress", "pretrain", "--model", "mlp", "--epochs", "3", "--out",
                    str(path), "--quiet"], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return path
