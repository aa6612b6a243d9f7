"""Run by tests/test_distributed.py under torchrun (or alone, as the single-process reference): compress the
digits MLP and write what this rank ended with, so the test can compare ranks with each other independently
of the package's own cross-rank check.

usage: distributed_worker.py WEIGHTS METHOD OUT_FOLDER EPOCHS
"""

import json
import sys
from pathlib import Path

from bayescompress import distributed, workflows
from bayescompress.compress import PipelineConfig
from bayescompress.io import save_weights


def main() -> None:
    weights, method, out, epochs = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    device = distributed.init_from_environment("cpu")
    try:
        from bayescompress import methods

        settings = {"finetune_epochs": 2} | ({} if method == "magnitude" else {"epochs": epochs})
        settings |= {"update_interval": 10} if method == "ssvi" else {}  # a few drop-and-grow updates
        result = workflows.compress_files("mlp", weights, "digits", None, methods.get(method)(**settings),
                                          pipeline=PipelineConfig(quiet=True, device=device), batch_size=64)
        rank = distributed.rank()
        state = {f"mask/{k}": v for k, v in result.masks.to_tensors().items()}
        state |= {f"network/{k}": v for k, v in result.compressed.state_dict().items()}
        save_weights(state, out / f"rank{rank}.safetensors")
        (out / f"rank{rank}.json").write_text(json.dumps(result.metrics))
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
