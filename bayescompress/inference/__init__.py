"""Training: the ELBO loop, the callbacks inference methods plug into, and relaxed-Bernoulli gates."""

from bayescompress.inference.gates import GateMonitor, SilentUnits, point_gates, sample_gates
from bayescompress.inference.stopping import EarlyStopping
from bayescompress.inference.train import Callback, NonFiniteLossError, Trainer, TrainConfig, fit

__all__ = ["Callback", "EarlyStopping", "GateMonitor", "NonFiniteLossError", "SilentUnits", "TrainConfig", "Trainer", "fit", "point_gates",
           "sample_gates"]
