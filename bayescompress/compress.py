"""``compress``: a pretrained network in, a trained, pruned and physically smaller network out.

Recipes (SPEC sections 1, 5 and 6):
- ``"gaussian-snr"``: convert to a mean-field Bayesian network with a Gaussian prior, train it by VI, keep the
  weights (or units) with the highest signal-to-noise ratio |mu|/sigma (self-compression), fine-tune the
  survivors by masked VI, propagate structure, export.
- ``"ss-gl"`` / ``"ss-ghs"``: convert with a spike-and-slab group-lasso / group-horseshoe prior (a gate per
  neuron or filter, optionally per input feature), train gates, scales and weights by relaxed-Bernoulli VI,
  drop every unit whose inclusion probability is below 1/2, fold the surviving gates and scales into the
  weights, fine-tune by masked VI under a Gaussian prior, propagate structure, export.
- ``"turbo-vbi"``: convert with the three-layer hierarchical prior (MRF support -> Gamma precision -> Gaussian
  weight), train by Turbo-VBI (SGD on q(w), closed-form q(gamma), q(s) updates, loopy BP on each layer's support
  grid), drop every weight whose posterior inclusion pi~ is below 1/2, fine-tune the survivors by masked VI
  under a Gaussian prior, propagate structure, export.
- ``"magnitude"``: the non-Bayesian baseline — keep each layer's largest |w| of the pretrained network,
  fine-tune the survivors deterministically, propagate structure, export.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bayescompress._validation import (
    check_choice,
    check_device,
    check_in_range,
    check_non_negative_int,
    check_positive,
    check_positive_int,
    check_probability,
)
from bayescompress.inference import Callback, EarlyStopping, GateMonitor, SilentUnits, TrainConfig, TurboCallback, fit
from bayescompress.metrics import dense_macs, evaluate, latency_seconds, size_counts, sparse_macs
from bayescompress.nn import PosteriorInit, bayesian_layers, bayesianize_, fold_multipliers_, output_layer
from bayescompress.nn.model import warn_unhandled
from bayescompress.priors import GaussianPrior, HierarchicalPrior, SpikeSlabGroupHorseshoe, SpikeSlabGroupLasso
from bayescompress.priors.hierarchical import GRAPHS
from bayescompress.pruning import (
    InclusionPruning,
    MagnitudePruning,
    SNRPruning,
    UnsupportedGraphError,
    export_sequential,
    export_with_torch_pruning,
    prunable_layers,
    propagate,
)
from bayescompress.pruning.batchnorm import fold_batchnorm_, foldable_pairs
from bayescompress.pruning.graph_export import GraphSurgery, bayesian_export, to_plain_network
from bayescompress.pruning.masks import copy_network
from bayescompress.pruning.structure import layer_output_shapes
from bayescompress.runs import CompressionResult, ExportRecord, units_per_layer

# Validation inputs kept with a run: the graph export's constant test and a saved run's output check use them.
PROBE_SIZE = 8
# Largest |logit difference| between the export and the masked network that counts as the same function.
EXPORT_TOLERANCE = 1e-4

METHODS = ("gaussian-snr", "ss-gl", "ss-ghs", "turbo-vbi", "magnitude")
SPIKE_SLAB_PRIORS = {"ss-gl": SpikeSlabGroupLasso, "ss-ghs": SpikeSlabGroupHorseshoe}


@dataclass(frozen=True)
class CompressConfig:
    """Settings of :func:`compress`, validated on construction.

    Parameters
    ----------
    epochs: VI epochs before pruning (magnitude prunes the pretrained weights directly).
    lr: Adam learning rate of those epochs.
    prior_lr: learning rate of the spike-and-slab gate logits and log-scales (ss-gl, ss-ghs).
    input_gate_lr: learning rate of the input gates' logits (ss-gl, ss-ghs with ``input_gates``); None =
        ``prior_lr``. Faster, it removes uninformative inputs before the first layer's units are weighed
        (see :class:`~bayescompress.TrainConfig`).
    rho_lr: learning rate of the posterior rho (ss-gl, ss-ghs, turbo-vbi): sigma must widen before the gates
        or supports decide.
    prior_scale: standard deviation s0 of the Gaussian prior (gaussian-snr; every method's fine-tuning).
    prior_inclusion: lambda, the spike-and-slab prior probability that a unit is on (ss-gl, ss-ghs).
    temperature: temperature of the relaxed-Bernoulli gates (ss-gl, ss-ghs).
    input_gates: also gate the network's input features, so inputs that carry nothing are removed (ss-gl,
        ss-ghs).
    pi0: the MRF's unary prior probability that a weight is active (turbo-vbi); smaller prunes more.
    mrf_p11, mrf_p01: P(active | active neighbour) and P(active | inactive neighbour) of the support MRF, along
        rows and columns alike (turbo-vbi).
    mrf_graph: the support's factor graph per layer: "grid", "rows", "columns" or "independent" (turbo-vbi).
    turbo_updates_per_epoch: Turbo-VBI iterations (module A + module B) per epoch (turbo-vbi).
    init_rho: starting rho of every weight (sigma = softplus(rho) = 0.0025 at -6); None = sigma proportional
        to |w| (:class:`~bayescompress.nn.PosteriorInit`). Starting well above 1e-3 |w| spares VI the many
        epochs it otherwise spends growing sigma (the defaults follow the benchmarked LeNet-300-100 recipe).
    kl_warmup_epochs: linear KL warm-up (epochs).
    kl_weight: weight of the KL after warm-up in the training before pruning (1 = the ELBO; below 1 a
        tempered posterior, which prunes less).
    max_val_drop: early stopping of the training before pruning (ss-gl, ss-ghs): stop once the validation
        accuracy of the posterior-mean network (point gates: the network pruning keeps) falls more than this
        below its starting value, and prune the last state within that budget, so ``epochs`` becomes an
        upper bound (:class:`~bayescompress.inference.EarlyStopping`). None = train all ``epochs``. The
        budget is on the network before fine-tuning, which recovers part of the loss.
    val_checks_per_epoch: how often per epoch that accuracy is measured (evenly spaced batches); more checks
        give a finer choice of where to stop, at the cost of a validation pass each.
    keep_fraction: fraction of weights (or, with ``level="unit"``, of each layer's units) kept, in (0, 1).
    snr_threshold: keep SNR >= this instead of a fraction (gaussian-snr only).
    level: ``"weight"`` or ``"unit"`` (gaussian-snr).
    finetune_epochs: epochs of training of the surviving weights under the masks (0 = none).
    finetune_lr: peak learning rate of the fine-tuning (annealed to 0 by a cosine schedule).
    mc_samples: posterior samples for the compressed network's metrics.
    latency_batch: batch size of the latency measurement (halved until one pass fits the budget).
    latency_budget: about how many seconds the latency measurement may take per network.
    fold_batchnorm: fold every BatchNorm that directly follows a Linear/Conv2d into it before conversion, so
        the channels a prior switches off are exactly zero and can be removed (the function is unchanged; see
        :mod:`bayescompress.pruning.batchnorm`).
    seed, device, quiet: as in :class:`~bayescompress.TrainConfig`.

    Example
    -------
    >>> CompressConfig(keep_fraction=0.05).keep_fraction
    0.05
    """

    epochs: int = 10
    lr: float = 1e-3
    prior_lr: float = 3e-3
    input_gate_lr: float | None = None
    rho_lr: float = 1e-2
    prior_scale: float = 0.5
    prior_inclusion: float = 1e-3
    temperature: float = 0.5
    input_gates: bool = True
    pi0: float = 0.01
    mrf_p11: float = 0.7
    mrf_p01: float = 0.3
    mrf_graph: str = "grid"
    turbo_updates_per_epoch: int = 1
    init_rho: float | None = -6.0
    kl_warmup_epochs: int = 0
    kl_weight: float = 1.0
    max_val_drop: float | None = None
    val_checks_per_epoch: int = 1
    keep_fraction: float = 0.1
    snr_threshold: float | None = None
    level: str = "weight"
    finetune_epochs: int = 10
    finetune_lr: float = 1e-3
    mc_samples: int = 10
    latency_batch: int = 256
    latency_budget: float = 1.0
    fold_batchnorm: bool = True
    seed: int = 0
    device: str = "cpu"
    quiet: bool = False

    def __post_init__(self) -> None:
        check_positive_int("epochs", self.epochs)
        check_in_range("lr", self.lr, 0.0, 10.0, low_inclusive=False)
        check_in_range("prior_lr", self.prior_lr, 0.0, 10.0, low_inclusive=False)
        if self.input_gate_lr is not None:
            check_in_range("input_gate_lr", self.input_gate_lr, 0.0, 10.0, low_inclusive=False)
        check_in_range("rho_lr", self.rho_lr, 0.0, 10.0, low_inclusive=False)
        check_positive("prior_scale", self.prior_scale)
        check_probability("prior_inclusion", self.prior_inclusion)
        check_positive("temperature", self.temperature)
        for name in ("pi0", "mrf_p11", "mrf_p01"):
            check_probability(name, getattr(self, name))
        check_choice("mrf_graph", self.mrf_graph, GRAPHS)
        check_positive_int("turbo_updates_per_epoch", self.turbo_updates_per_epoch)
        check_non_negative_int("kl_warmup_epochs", self.kl_warmup_epochs)
        check_in_range("kl_weight", self.kl_weight, 0.0, 1.0, low_inclusive=False)
        if self.max_val_drop is not None:
            check_in_range("max_val_drop", self.max_val_drop, 0.0, 1.0)
        check_positive_int("val_checks_per_epoch", self.val_checks_per_epoch)
        check_in_range("keep_fraction", self.keep_fraction, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        if self.snr_threshold is not None:
            check_in_range("snr_threshold", self.snr_threshold, 0.0)
        check_choice("level", self.level, ("weight", "unit"))
        check_non_negative_int("finetune_epochs", self.finetune_epochs)
        check_in_range("finetune_lr", self.finetune_lr, 0.0, 10.0, low_inclusive=False)
        check_non_negative_int("mc_samples", self.mc_samples)
        check_positive_int("latency_batch", self.latency_batch)
        check_positive("latency_budget", self.latency_budget)
        check_non_negative_int("seed", self.seed)
        check_device("device", self.device)


def compress(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    method: str = "gaussian-snr",
    *,
    test_loader: Iterable | None = None,
    epochs: int | None = None,
    config: CompressConfig | None = None,
) -> CompressionResult:
    """Train, prune and export ``model`` (left untouched; the work happens on a copy).

    ``model`` is any network whose compute layers are ``nn.Linear`` / ``nn.Conv2d`` (docs/own-models.md):
    BatchNorms right after such a layer are folded into it first, modules that cannot be converted are named in
    a warning and left deterministic, and the output layer (kept whole) is the last layer the forward pass runs.
    Metrics are measured on ``test_loader`` when given, else on ``val_loader``; ``val_loader`` also provides
    the per-epoch validation metrics and the probe inputs (shapes, the graph export's checks, the run folder's
    output check). ``epochs`` overrides ``config.epochs``.

    Example
    -------
    >>> result = compress(pretrained, train, val, method="gaussian-snr", epochs=5)   # doctest: +SKIP
    >>> result.metrics["compression_rate"], result.exported                          # doctest: +SKIP
    """
    check_choice("method", method, METHODS)
    config = config or CompressConfig()
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    eval_loader = test_loader if test_loader is not None else val_loader
    first = next(iter(val_loader), None)
    if first is None:
        raise ValueError("val_loader yields no batch; compress needs validation data (use a val_fraction > 0)")
    # a few inputs: the graph export recognises constant channels by their being equal on all of them
    probe = first[0][:PROBE_SIZE].to(config.device)
    example = probe[:1]
    original = copy_network(model).to(config.device).eval()

    network = copy_network(model).to(config.device).eval()
    folded = _fold_batchnorm(network, probe) if config.fold_batchnorm else []
    output = output_layer(network, example)
    torch.manual_seed(config.seed)
    network, masks, history, samples, inclusion = _train_and_prune(
        network, train_loader, val_loader, method, config, example, output
    )
    network.eval()  # what follows runs the deployed network: Dropout off, BatchNorm on its running statistics
    surgery = None
    try:
        structure = propagate(network, masks, example)
        final_masks = structure.masks
        final_masks.apply_(network)  # drops weights of units nothing reads: the function is unchanged
        exported = export_sequential(network, structure).eval()
        posterior = export_sequential(network, structure, bayesian=True).eval() if samples else None
    except UnsupportedGraphError:  # not a plain chain: Torch-Pruning's dependency graph does the surgery
        structure, final_masks = None, masks
        exported, surgery = _export_graph(network, masks, probe, output, val_loader, config.device)
        posterior = bayesian_export(network, exported, surgery, probe).eval() if samples else None
    # propagate already measured the layer shapes on the sequential path
    shapes = structure.output_shapes if structure else layer_output_shapes(
        network, prunable_layers(network), example)

    metrics = _measure(original, network, exported, posterior, final_masks, shapes, eval_loader, example, samples,
                       config)
    export = ExportRecord(folded, surgery, probe.detach().cpu())
    return CompressionResult(method, dataclasses.asdict(config), metrics, final_masks, original, network,
                             exported, structure, history, inclusion, posterior=posterior, export_record=export)


def _export_graph(network, masks, probe, output, val_loader, device) -> tuple[nn.Module, GraphSurgery]:
    """The Torch-Pruning export, checked on the whole validation set: a channel that was constant on the probe
    inputs only (fed by an input-dependent term that is not a layer) would show there, and then only unread
    channels are removed. An untraceable graph keeps every channel. Either fallback warns."""
    for constants in (True, False):
        try:
            exported, surgery = export_with_torch_pruning(network, masks, probe, output_layer=output,
                                                          constants=constants)
        except Exception as error:  # noqa: BLE001 - an untraceable graph, or a failed check: keep the work
            warnings.warn(f"the exported network keeps every channel (the masks still hold): {error}", stacklevel=3)
            break
        difference = _max_abs_diff(exported, network, val_loader, device)
        if difference <= EXPORT_TOLERANCE:
            return exported.eval(), surgery
        warnings.warn(f"the graph export differs from the masked network by {difference:.3g} on the validation "
                      "data" + ("; exporting again with unread channels removed only" if constants else
                                "; keeping every channel"), stacklevel=3)
    return to_plain_network(network).eval(), GraphSurgery()


def _fold_batchnorm(network: nn.Module, probe: Tensor) -> list[tuple[str, str]]:
    """Fold every BatchNorm that directly follows a Linear/Conv2d into it (see
    :mod:`bayescompress.pruning.batchnorm`); a graph Torch-Pruning cannot trace keeps its BatchNorms."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules()):
        return []
    try:
        pairs = foldable_pairs(network, probe)
    except Exception as error:  # noqa: BLE001 - tracing arbitrary user code can fail; folding only improves
        warnings.warn(f"BatchNorm is not folded: Torch-Pruning could not trace the network ({error}); channels "
                      "behind a BatchNorm then cannot be removed", stacklevel=3)
        return []
    fold_batchnorm_(network, pairs)
    return pairs


def _train_and_prune(network, train_loader, val_loader, method, config, example, output):
    """The trained, masked network, its masks, the training records, the MC samples its metrics use, and the
    per-weight inclusion probabilities the pruning thresholded (Turbo-VBI only). ``output`` names the output
    layer (kept whole); ``example`` is an input, for the layer order."""
    train = dict(seed=config.seed, device=config.device, quiet=config.quiet, eval_samples=0)
    records: list[dict] = []
    inclusion: dict[str, Tensor] = {}
    callbacks: list[Callback] = []
    init = PosteriorInit(rho=config.init_rho)
    if method == "gaussian-snr":
        bayesianize_(network, GaussianPrior(scale=config.prior_scale), init=init, example_input=example)
        records += fit(network, train_loader, val_loader, TrainConfig(
            epochs=config.epochs, lr=config.lr, kl_warmup_epochs=config.kl_warmup_epochs,
            kl_weight=config.kl_weight, **train))
        masks = SNRPruning(threshold=config.snr_threshold, level=config.level,
                           keep_fraction=None if config.snr_threshold is not None else config.keep_fraction,
                           ).masks(network, output)
        samples = config.mc_samples
    elif method in SPIKE_SLAB_PRIORS:
        prior = SPIKE_SLAB_PRIORS[method](prior_inclusion=config.prior_inclusion, temperature=config.temperature,
                                          input_gates=config.input_gates)
        bayesianize_(network, prior, init=init, example_input=example)
        callbacks = [GateMonitor()]
        if config.max_val_drop is not None:  # last: it restores the kept state after the others have run
            callbacks.append(EarlyStopping(val_loader, config.max_val_drop, config.val_checks_per_epoch))
        records += fit(network, train_loader, val_loader, TrainConfig(
            epochs=config.epochs, lr=config.lr, prior_lr=config.prior_lr, input_gate_lr=config.input_gate_lr,
            rho_lr=config.rho_lr, kl_warmup_epochs=config.kl_warmup_epochs, kl_weight=config.kl_weight, **train),
            callbacks=callbacks)
        masks = InclusionPruning(threshold=0.5).masks(network, output)
        # gates and scales become part of the weights: fine-tuning and export then see ordinary layers
        fold_multipliers_(network, GaussianPrior(scale=config.prior_scale))
        # Under the slab, a weight the data leave free has sigma = s0 * s_j, the unit's whole weight scale;
        # as a Gaussian-prior posterior that is pure noise, so the fine-tuning restarts sigma as conversion did.
        for _, layer in bayesian_layers(network):
            layer.reset_sigma_(init)
        callbacks = [SilentUnits(network, masks.units)]
        samples = config.mc_samples
    elif method == "turbo-vbi":
        prior = HierarchicalPrior(pi0=config.pi0, row_p11=config.mrf_p11, row_p01=config.mrf_p01,
                                  column_p11=config.mrf_p11, column_p01=config.mrf_p01, graph=config.mrf_graph)
        bayesianize_(network, prior, init=init, example_input=example)
        records += fit(network, train_loader, val_loader, TrainConfig(
            epochs=config.epochs, lr=config.lr, rho_lr=config.rho_lr, kl_warmup_epochs=config.kl_warmup_epochs,
            kl_weight=config.kl_weight, **train), callbacks=[TurboCallback(config.turbo_updates_per_epoch)])
        masks = InclusionPruning(threshold=0.5).masks(network, output)
        inclusion = {name: layer.prior.statistics(layer)["inclusion"].cpu()
                     for name, layer in TurboCallback.turbo_layers(network)}
        fold_multipliers_(network, GaussianPrior(scale=config.prior_scale))  # no multipliers: a change of prior
        samples = config.mc_samples
    else:
        warn_unhandled(network, stacklevel=4)
        masks = MagnitudePruning(config.keep_fraction).masks(network, output)
        samples = 0
    masks.apply_(network)
    if config.finetune_epochs:
        records += fit(network, train_loader, val_loader, TrainConfig(  # annealed: settle the survivors
            epochs=config.finetune_epochs, lr=config.finetune_lr, lr_schedule="cosine", **train), callbacks)
    return network, masks, records, samples, inclusion


@torch.no_grad()
def _max_abs_diff(a: nn.Module, b: nn.Module, loader: Iterable, device) -> float:
    a.eval(), b.eval()
    worst = 0.0
    for x, _ in loader:
        x = x.to(device)
        worst = max(worst, float((a(x) - b(x)).abs().max()))
    return worst


def _latency_batch(loader: Iterable, size: int) -> Tensor:
    x = next(iter(loader))[0]
    repeats = -(-size // x.shape[0])
    return x.repeat(repeats, *([1] * (x.dim() - 1)))[:size]


def _measure(original, network, exported, posterior, masks, output_shapes, loader, example, samples, config) -> dict:
    sizes_original, sizes_masked = size_counts(original), size_counts(network)
    batch = _latency_batch(loader, config.latency_batch).to(config.device)
    latency, batch_size = latency_seconds({"original": original, "exported": exported}, batch,
                                          budget_seconds=config.latency_budget)
    macs = {
        "dense": dense_macs(original, example),
        "sparse": sparse_macs(masks.weight, output_shapes),
        "exported": dense_macs(exported, example),
    }
    # the MC metrics are those of the posterior the run keeps (the Bayesian export), with a fixed seed, so a
    # saved run reproduces them exactly
    compressed = posterior if posterior is not None else network
    return {
        "original": evaluate(original, loader, samples=0, device=config.device),
        "compressed": evaluate(compressed, loader, samples=samples, device=config.device, seed=config.seed),
        "exported": evaluate(exported, loader, samples=0, device=config.device),
        "mc_samples": samples,
        "params": {"total": sizes_original["params_total"], "nonzero": sizes_masked["params_nonzero"],
                   "exported": size_counts(exported)["params_total"]},
        "weights": {"total": sizes_original["weights_total"], "nonzero": sizes_masked["weights_nonzero"]},
        "compression_rate": sizes_original["weights_total"] / max(sizes_masked["weights_nonzero"], 1),
        "macs": macs,
        "macs_ratio": macs["exported"] / macs["dense"],
        "latency": {"batch_size": batch_size, "original_s": latency["original"],
                    "exported_s": latency["exported"]},
        "latency_ratio": latency["exported"] / latency["original"],
        "architecture": {"original": units_per_layer(original), "exported": units_per_layer(exported)},
        "export_max_abs_diff": _max_abs_diff(exported, network, loader, config.device),
    }
