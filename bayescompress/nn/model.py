"""Whole-model operations: convert a pretrained network, sum its KL, predict by Monte Carlo."""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from bayescompress._validation import check_non_negative_int
from bayescompress.nn.layers import BAYESIAN_TYPES, BayesianLayer, PosteriorInit, is_handled_layer
from bayescompress.priors.base import Prior
from bayescompress.priors.gaussian import GaussianPrior

PriorFactory = Callable[[str, nn.Module], Prior]

# Modules with weights of their own that stay deterministic by design: normalisation layers.
_DETERMINISTIC_BY_DESIGN = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def handled_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every layer bayescompress converts, prunes and exports, in registration order: not a
    layer whose parameters another module shares (an output layer tied to an embedding), which conversion would
    untie."""
    shared = _shared_parameters(model)
    return [(name, m) for name, m in model.named_modules()
            if is_handled_layer(m) and not any(id(p) in shared for p in m.parameters(recurse=False))]


def _shared_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters held by more than one module (one module registered twice counts once)."""
    holders = Counter(id(p) for module in model.modules() for p in module.parameters(recurse=False))
    return {key for key, count in holders.items() if count > 1}


def unhandled_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own weights but are neither handled layers nor normalisation layers (attention,
    embeddings, nn.Linear subclasses, other convolutions, layers tied to another module): they stay
    deterministic and unpruned."""
    handled = {id(m) for _, m in handled_layers(model)}
    found = []
    for name, module in model.named_modules():
        # a parametrization's own modules hold its layer's parameters: the layer is named, not its parts
        if id(module) in handled or isinstance(module, (*_DETERMINISTIC_BY_DESIGN, parametrize.ParametrizationList)):
            continue
        if any(True for _ in module.parameters(recurse=False)) or isinstance(module, (nn.Linear, nn.Conv2d)):
            found.append((name, module))
    return found


def warn_unhandled(model: nn.Module, stacklevel: int = 3) -> None:
    """One warning naming every module :func:`unhandled_modules` finds, if any."""
    skipped = unhandled_modules(model)
    if skipped:
        names = ", ".join(f"{name or '<root>'} ({type(m).__name__})" for name, m in skipped)
        parametrized = any(parametrize.is_parametrized(m) for _, m in skipped)
        subclass = any(isinstance(m, (nn.Linear, nn.Conv2d)) and not is_handled_layer(m)
                       and not parametrize.is_parametrized(m) for _, m in skipped)
        tied = any(is_handled_layer(m) for _, m in skipped)
        why = ("; a subclass such as MultiheadAttention.out_proj has an owner that reads its weight directly"
               if subclass else "") + ("; a layer whose weight another module shares (tied) stays tied" if tied
                                       else "") + (
            "; a parametrized layer (torch.nn.utils.parametrizations: weight_norm, spectral_norm) computes its weight"
            " on every call, so it is kept whole" if parametrized else "")
        warnings.warn(f"kept deterministic and unpruned (only exact nn.Linear / nn.Conv2d layers are converted"
                      f"{why}): {names}", stacklevel=stacklevel)


def observe(model: nn.Module, layers: Iterable[tuple[str, nn.Module]], x: Tensor,
            record: Callable[[str, tuple, Tensor], None], grad: bool = False) -> object:
    """One eval-mode forward pass of ``model`` on ``x``, calling ``record(name, inputs, output)`` each time one
    of the named ``layers`` runs, and returning what the model returns (recorded by autograd only with ``grad``).
    Every module's own mode is restored afterwards (a BatchNorm kept in eval inside a training model stays so)
    and the hooks are removed."""
    hooks = [layer.register_forward_hook(lambda _m, inputs, output, name=name: record(name, inputs, output))
             for name, layer in layers]
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.set_grad_enabled(grad):
            return model(x)
    finally:
        for module, training in modes:
            module.training = training
        for hook in hooks:
            hook.remove()


def execution_order(model: nn.Module, example_input: Tensor) -> list[str]:
    """Names of the handled layers in the order one eval-mode forward pass on ``example_input`` first calls
    them, whatever order the modules were registered in; layers the pass never calls come last, in registration
    order."""
    called: list[str] = []
    observe(model, handled_layers(model), example_input[:1], lambda name, _inputs, _output: called.append(name))
    return _with_uncalled(model, called)


def uncalled_layers(model: nn.Module, example_input: Tensor) -> list[str]:
    """The handled layers one eval-mode forward pass on ``example_input`` never calls (a head kept for another
    task, a branch left in after an experiment), in registration order."""
    called: set[str] = set()
    observe(model, handled_layers(model), example_input[:1], lambda name, _inputs, _output: called.add(name))
    return [name for name, _ in handled_layers(model) if name not in called]


def _with_uncalled(model: nn.Module, called: list[str]) -> list[str]:
    order = list(dict.fromkeys(called))
    return order + [name for name, _ in handled_layers(model) if name not in order]


def output_layers(model: nn.Module, example_input: Tensor | None = None) -> list[str]:
    """The network's output layers, whose units are the classes and are never pruned: the handled layers whose
    outputs reach what the forward pass returns without passing through another handled layer (one for a plain
    classifier, two for two averaged heads; a projection computed after the head but not returned is not one).

    Found from the autograd graph of one eval-mode pass on ``example_input``; where that pass records no graph,
    the last handled layer it runs; without an example input, the last one registered.
    """
    layers = handled_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer that can be converted (exactly "
                         "those types, not sharing weights with another module)")
    return _traced(model, example_input)[1] if example_input is not None else [layers[-1][0]]


def _traced(model: nn.Module, example_input: Tensor) -> tuple[list[str], list[str], list[str]]:
    """(:func:`execution_order`, :func:`output_layers`, the layers that run but whose outputs do not reach the
    returned tensors) from one eval-mode pass recorded by autograd, walking back from the returned tensors."""
    called: list[str] = []
    producers: dict[object, str] = {}  # autograd node of each layer call's output -> the layer

    def record(name: str, _inputs: tuple, output: Tensor) -> None:
        called.append(name)
        if isinstance(output, Tensor) and output.grad_fn is not None:
            producers[output.grad_fn] = name

    x = example_input[:1].detach()
    try:  # on a copy of a leaf that requires grad: the graph exists even for frozen layers, and a forward pass
        # that changes its input in place may still do so
        result = observe(model, handled_layers(model), x.requires_grad_().clone() if x.is_floating_point() else x,
                         record, grad=True)
    except RuntimeError as error:  # a forward pass that cannot run under autograd: the rule without the graph
        order = execution_order(model, example_input)
        warnings.warn(f"the output layer is taken to be {order[-1]}, the last layer the forward pass runs: the "
                      f"pass could not be traced under autograd ({error})", stacklevel=3)
        return order, order[-1:], []
    order = _with_uncalled(model, called)
    returned = (result.values() if isinstance(result, dict) else result if isinstance(result, (tuple, list))
                else [result])
    stack = [(t.grad_fn, True) for t in returned if isinstance(t, Tensor) and t.grad_fn is not None]
    seen, found, reached = set(), set(), set()
    while stack:  # the whole graph: the first layers met are the outputs, every layer met reaches them
        node, first = stack.pop()
        if node is None or (node, first) in seen:
            continue
        seen.add((node, first))
        if node in producers:
            reached.add(producers[node])
            if first:
                found.add(producers[node])
        stack.extend((parent, first and node not in producers) for parent, _ in node.next_functions)
    detached = [name for name in dict.fromkeys(producers.values()) if name not in reached] if found else []
    return order, sorted(found, key=order.index) if found else order[-1:], detached


def _patterns(patterns: Iterable[str] | str | None) -> list[str] | None:
    """Glob patterns as a list; one string is one pattern (not its characters)."""
    if patterns is None:
        return None
    return [patterns] if isinstance(patterns, str) else list(patterns)


def _matches(name: str, patterns: Iterable[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns or ())


def bayesianize_(
    model: nn.Module,
    prior: Prior | PriorFactory | None = None,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    init: PosteriorInit | None = None,
    example_input: Tensor | None = None,
) -> nn.Module:
    """Convert every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` into its Bayesian version, in place.

    The pretrained weights become the posterior means, so before training the converted model in
    ``eval()`` computes exactly what the original did. BatchNorm and every other module stay deterministic;
    modules with weights that cannot be converted (attention, embeddings, subclasses of nn.Linear such as
    ``MultiheadAttention.out_proj``) are named in one warning and left as they are.

    Parameters
    ----------
    model:
        Any ``nn.Module``; layers are found by ``isinstance`` anywhere in the module tree (the root too).
    prior:
        A :class:`~bayescompress.priors.Prior` (each layer gets its own deep copy of
        ``prior.for_position(first, last)``, so e.g. the output layer can be slab-only), a factory
        ``(qualified_name, layer) -> Prior`` for per-layer priors, or None for ``GaussianPrior()``.
    include, exclude:
        Glob patterns over qualified module names (e.g. ``"features.*"``; one pattern may be a string); a layer
        is converted when it matches ``include`` (or ``include`` is None) and does not match ``exclude``. A
        pattern that matches no convertible layer is refused.
    init:
        Starting posterior standard deviation (:class:`PosteriorInit`).
    example_input:
        A batch the model accepts. With it the first layer (``for_position``) is the first the forward pass runs
        and the output layers are :func:`output_layers`'; without it, the first and last registered.

    Returns
    -------
    The same ``model`` object.

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> _ = bayesianize_(net, GaussianPrior(scale=0.1), exclude=["2"])
    >>> [type(m).__name__ for m in net]
    ['BayesLinear', 'ReLU', 'Linear']
    """
    candidates = [(name, module) for name, module in handled_layers(model) if not isinstance(module, BayesianLayer)]
    if not candidates and not bayesian_layers(model):
        supported = ", ".join(f"nn.{t.__name__}" for t in BAYESIAN_TYPES)
        raise ValueError(
            f"{type(model).__name__} has no layer that can be made Bayesian; supported types: {supported}. "
            "Pass a model built from these layers."
        )
    include, exclude = _patterns(include), _patterns(exclude)
    every = [name for name, _ in handled_layers(model)]
    for kind, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns or ():  # a pattern that matches nothing is a typo, not a request
            if not any(fnmatch.fnmatchcase(name, pattern) for name in every):
                raise ValueError(f"{kind} pattern {pattern!r} matches none of the convertible layers "
                                 f"({', '.join(name or '<root>' for name in every)})")
    selected = [
        (name, module)
        for name, module in candidates
        if (include is None or _matches(name, include)) and not _matches(name, exclude)
    ]
    if candidates and not selected:
        names = ", ".join(name or "<root>" for name, _ in candidates)
        raise ValueError(f"include/exclude patterns select none of the convertible layers ({names})")
    converted = [f"{name or '<root>'} ({type(module.prior).__name__})" for name, module in bayesian_layers(model)
                 if (include is None or _matches(name, include)) and not _matches(name, exclude)]
    if converted:
        warnings.warn(f"already Bayesian, left with the prior they have: {', '.join(converted)}; to give them "
                      "another prior, convert a fresh copy of the deterministic network", stacklevel=2)
    warn_unhandled(model)
    # the network's first and output layers (output layers keep their units under spike-and-slab priors)
    registered = [name for name, _ in handled_layers(model)]
    order, outputs, unreached = (_traced(model, example_input) if example_input is not None
                                 else (registered, registered[-1:], []))
    if unreached := [name for name in unreached if name in dict(selected)]:
        warnings.warn(f"the outputs of {', '.join(unreached)} do not reach what the forward pass returns through "
                      "autograd (not returned, used only through an argmax, a .detach() or torch.no_grad()): no "
                      "gradient from the data reaches them, so training moves them by their prior alone",
                      stacklevel=2)
    for name, module in selected:
        bayes_type = BAYESIAN_TYPES[type(module)]
        position = dict(first=name == order[0], last=name in outputs)
        bayes_type.convert_(module, _prior_for(prior, name, module, position), init)
        module.is_output = position["last"]  # the pruning strategies keep its units (the classes)
    return model


def _prior_for(prior: Prior | PriorFactory | None, name: str, module: nn.Module, position: dict) -> Prior:
    if prior is None:
        return GaussianPrior()
    if isinstance(prior, Prior):
        return copy.deepcopy(prior.for_position(**position))
    if callable(prior):
        made = prior(name, module)
        if not isinstance(made, Prior):
            raise TypeError(f"the prior factory returned {type(made).__name__} for layer {name!r}, not a Prior")
        return made
    raise TypeError(f"prior must be a Prior, a factory (name, layer) -> Prior, or None; got {type(prior).__name__}")


def bayesian_layers(model: nn.Module) -> list[tuple[str, BayesianLayer]]:
    """(qualified name, layer) of every Bayesian layer of ``model``, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BayesianLayer)]


def kl_divergence(model: nn.Module) -> Tensor:
    """KL(q || p) of the whole model: the sum over its Bayesian layers (never an average)."""
    terms = [layer.kl() for _, layer in bayesian_layers(model)]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def fold_multipliers_(model: nn.Module, prior: Prior | None = None) -> nn.Module:
    """Fold every layer's prior multipliers into its weights and give it a copy of ``prior`` (Gaussian default).

    After spike-and-slab training this turns each layer into an ordinary mean-field layer whose eval-mode
    function is the same (see :meth:`BayesianLayer.fold_multipliers_`); returns ``model``.
    """
    for _, layer in bayesian_layers(model):
        layer.fold_multipliers_(copy.deepcopy(prior) if prior is not None else GaussianPrior())
    return model


def update_priors(model: nn.Module) -> None:
    """Run every prior's closed-form update (between SGD phases)."""
    for _, layer in bayesian_layers(model):
        layer.prior.update(layer)


def set_estimator_(model: nn.Module, estimator: str) -> nn.Module:
    """How every Bayesian layer of ``model`` samples in training: ``"lrt"``, ``"flipout"`` or ``"shared"``
    (:class:`~bayescompress.nn.BayesianLayer`); returns ``model``."""
    for _, layer in bayesian_layers(model):
        layer.set_estimator_(estimator)
    return model


@contextlib.contextmanager
def mc_sampling(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Make Bayesian layers sample their weights even in ``eval()`` mode (BatchNorm stays in eval)."""
    layers = [layer for _, layer in bayesian_layers(model)]
    previous = [layer.mc_sample for layer in layers]
    for layer in layers:
        layer.mc_sample = enabled
    try:
        yield model
    finally:
        for layer, state in zip(layers, previous):
            layer.mc_sample = state


@contextlib.contextmanager
def shared_sigma(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, each Bayesian layer computes sigma = softplus(rho) once and reuses it: the forward
    pass's variance and the KL then share one softplus and, in the backward, one softplus gradient.

    The training loop wraps each mini-batch's loss in it; the memo is dropped on exit, and a changed rho (an
    in-place update bumps its version) is never served a stale sigma.

    Example
    -------
    >>> net = bayesianize_(nn.Sequential(nn.Linear(4, 3))).train()
    >>> with shared_sigma(net):
    ...     loss = net(torch.randn(2, 4)).sum() + kl_divergence(net)
    >>> loss.backward()
    """
    layers = [layer for _, layer in bayesian_layers(model)]
    for layer in layers:
        layer._sigma_memo = {}
    try:
        yield model
    finally:
        for layer in layers:
            layer._sigma_memo = None


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, samples: int = 10) -> Tensor:
    """Predictive class probabilities: the softmax averaged over ``samples`` posterior samples.

    ``samples=0`` (or a model with no Bayesian layer) gives the softmax at the posterior mean. The model is
    evaluated in ``eval()`` mode and its previous mode restored afterwards.

    Example
    -------
    >>> net = bayesianize_(nn.Sequential(nn.Linear(4, 3)))
    >>> predict(net, torch.randn(5, 4), samples=8).sum(dim=1)
    tensor([1.0000, 1.0000, 1.0000, 1.0000, 1.0000])
    """
    check_non_negative_int("samples", samples)
    was_training = model.training
    model.eval()
    try:
        if samples == 0 or not bayesian_layers(model):
            return torch.softmax(model(x), dim=-1)
        total = torch.zeros(())
        with mc_sampling(model):
            for _ in range(samples):
                total = total + torch.softmax(model(x), dim=-1)
        return total / samples
    finally:
        model.train(was_training)
