"""Training: the ELBO loop and the callbacks inference methods plug into."""

from bayescompress.inference.train import Callback, NonFiniteLossError, Trainer, TrainConfig, fit

__all__ = ["Callback", "NonFiniteLossError", "TrainConfig", "Trainer", "fit"]
