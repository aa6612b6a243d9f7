"""Training: the ELBO loop, the callbacks inference methods plug into, relaxed-Bernoulli gates, and Turbo-VBI
(module A's closed-form updates, module B's message passing on the support's factor graph)."""

from bayescompress.inference.cost import TrainingCost
from bayescompress.inference.gates import GateMonitor, SilentUnits, gate_gradient_balance
from bayescompress.inference.kept import KeptFraction
from bayescompress.priors.mrf import (
    BeliefPropagationWarning,
    FactorGraph,
    TransitionPotential,
    belief_propagation,
    gibbs_sample,
)
from bayescompress.inference.stopping import EarlyStopping
from bayescompress.inference.subspace import SparseSubspace
from bayescompress.inference.checkpoint import Checkpoint, PhaseCheckpoint
from bayescompress.inference.train import (
    Callback,
    CheckpointMismatchError,
    NonFiniteLossError,
    Trainer,
    TrainConfig,
    TrainingInterrupted,
    fit,
)
from bayescompress.inference.turbo import TurboCallback
from bayescompress.priors.spike_slab import point_gates, sample_gates  # the gates' sampling, for training code

__all__ = ["BeliefPropagationWarning", "Callback", "Checkpoint", "CheckpointMismatchError", "PhaseCheckpoint",
           "TrainingInterrupted", "EarlyStopping", "FactorGraph", "GateMonitor", "KeptFraction", "NonFiniteLossError",
           "SilentUnits", "SparseSubspace", "TrainConfig", "TrainingCost", "Trainer", "TransitionPotential", "TurboCallback", "belief_propagation", "fit", "gate_gradient_balance",
           "gibbs_sample", "point_gates", "sample_gates"]
