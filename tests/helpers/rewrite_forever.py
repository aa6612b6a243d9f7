"""Run by tests/test_atomic_writes.py and killed at random moments: writes one thing over and over.

usage: rewrite_forever.py checkpoint FOLDER   (a checkpoint whose tensor holds its serial number, 4 MB each)
       rewrite_forever.py run FOLDER          (a small run folder, replaced with overwrite=True)
"""

import sys

import torch

what, folder = sys.argv[1], sys.argv[2]
if what == "checkpoint":
    from bayescompress.inference.checkpoint import PhaseCheckpoint

    phase = PhaseCheckpoint(folder, 0)
    serial = phase.load()["serial"] + 1 if phase.exists() else 0  # continue the count of the killed writer
    while True:
        phase.save({"serial": serial, "values": torch.full((1_000_000,), float(serial))})
        serial += 1
else:
    from torch import nn

    from bayescompress import compress
    from bayescompress.compress import PipelineConfig

    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    result = compress(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), loader, loader, "magnitude",
                      pipeline=PipelineConfig(quiet=True, max_accuracy_loss=1.0))
    while True:
        result.save(folder, overwrite=True, plots=False)
        print("saved", flush=True)
