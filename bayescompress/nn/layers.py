"""Mean-field Gaussian Bayesian Linear and Conv2d layers sharing one local-reparameterisation core.

The Bayesian layers *are* ``nn.Linear`` / ``nn.Conv2d`` (subclasses): ``weight`` and ``bias`` hold the
posterior means, so ``isinstance`` checks, ``torch.nn.utils.prune``, FLOP counters and Torch-Pruning see an
ordinary layer, and the state_dict keeps the pretrained key names. The posterior standard deviation is
``softplus(weight_rho)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from torch import Tensor, nn

from bayescompress._validation import check_in_range, check_positive
from bayescompress.priors.base import Prior
from bayescompress.priors.gaussian import GaussianPrior

# How a training forward pass samples (docs/bayesian-layers.md#estimators): each gives every pre-activation the
# posterior's marginal distribution; they differ in how samples are correlated across a batch, and in cost.
ESTIMATORS = ("lrt", "flipout", "shared")

# Added under the square root so a pre-activation whose variance is exactly zero keeps a finite gradient.
_VARIANCE_FLOOR = 1e-8
# Smallest sigma a folded posterior keeps: a factor of 0 (a pruned unit) would otherwise make rho = -inf.
_SIGMA_FLOOR = 1e-6


# The starting rho a posterior may be given: sigma from about 1e-13 to 10.
RHO_RANGE = (-30.0, 10.0)


@dataclass(frozen=True)
class PosteriorInit:
    """How the posterior standard deviation starts when a pretrained layer is converted (SPEC section 0).

    Either ``sigma = relative * |w| + floor`` (the default: small, and proportional to each weight) or,
    when ``rho`` is given, the same ``rho`` for every weight (``sigma = softplus(rho)``).

    Example
    -------
    >>> PosteriorInit(rho=-6.0).sigma(torch.zeros(2)).round(decimals=5)
    tensor([0.0025, 0.0025])
    """

    relative: float = 1e-3
    floor: float = 1e-5
    rho: float | None = None

    def __post_init__(self) -> None:
        check_in_range("relative", self.relative, 0.0)
        check_positive("floor", self.floor)
        if self.rho is not None:
            check_in_range("rho", self.rho, *RHO_RANGE)

    def sigma(self, mean: Tensor) -> Tensor:
        """The starting standard deviations for posterior means ``mean``."""
        if self.rho is not None:
            return torch.full_like(mean, F.softplus(torch.tensor(float(self.rho))).item())
        return self.relative * mean.abs() + self.floor


# Above this, softplus(x) = x to float precision (torch's own threshold).
_SOFTPLUS_LINEAR = 20.0


def _softplus_and_slope(rho: Tensor) -> tuple[Tensor, Tensor]:
    """(softplus(rho), sigmoid(rho)) from one exp and one log, within two ulps of ``F.softplus``.

    On the CPU, torch's softplus calls a scalar log1p per entry, about a fifth of a LeNet-300-100 training
    step; here log1p(u) with u = exp(rho) is log(d) - ((d - 1) - u) / d for d = fl(1 + u), whose correction
    term recovers what rounding 1 + u lost (exactly u when 1 + u rounds to 1), and sigmoid = u / d comes free.
    """
    capped = rho.clamp_max(_SOFTPLUS_LINEAR)
    u = torch.exp(capped)
    d = u + 1.0
    out = torch.log(d).sub_((d - 1.0).sub_(u).div_(d))
    out.add_(rho - capped)  # the linear part past the threshold; before it this adds exact zeros
    return out, u.div_(d)


class _Softplus(torch.autograd.Function):
    """softplus with a backward that reuses the forward's sigmoid (see :func:`_softplus_and_slope`)."""

    @staticmethod
    def forward(ctx, rho: Tensor) -> Tensor:
        sigma, slope = _softplus_and_slope(rho)
        ctx.save_for_backward(slope)
        return sigma

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (slope,) = ctx.saved_tensors
        return grad * slope


def softplus(rho: Tensor) -> Tensor:
    """softplus(rho) = log(1 + exp(rho)), the posterior standard deviation of a parameter ``rho``.

    The same function as ``F.softplus`` (within two ulps); on the CPU about three times as fast.
    """
    if rho.device.type != "cpu":  # elsewhere torch's fused kernel is the fast one
        return F.softplus(rho)
    return _Softplus.apply(rho)


class _SoftplusSquared(torch.autograd.Function):
    """softplus(rho)^2, zeroed where ``keep`` is 0, with a hand-written backward.

    Runs on every weight at every step; autograd's version (softplus, then a product of a tensor with
    itself) spends twice the full-size passes in the backward: two products and their sum, then softplus's.
    """

    @staticmethod
    def forward(ctx, rho: Tensor, keep: Tensor | None) -> Tensor:
        sigma, slope = _softplus_and_slope(rho)
        if keep is not None:
            sigma = sigma.mul_(keep)  # a zero sigma also zeroes the pruned entries' gradient
        ctx.save_for_backward(sigma, slope)
        return sigma * sigma

    @staticmethod
    def backward(ctx, grad: Tensor):
        sigma, slope = ctx.saved_tensors
        # d softplus(rho)^2 / d rho = 2 sigma sigmoid(rho)
        return torch.mul(grad, sigma).mul_(slope).mul_(2.0), None


class _MaskedSquare(torch.autograd.Function):
    """sigma^2, zeroed where ``keep`` is 0: :class:`_SoftplusSquared` for a sigma computed once and shared."""

    @staticmethod
    def forward(ctx, sigma: Tensor, keep: Tensor | None) -> Tensor:
        if keep is not None:
            sigma = sigma * keep  # a zero sigma also zeroes the pruned entries' gradient
        ctx.save_for_backward(sigma)
        return sigma * sigma

    @staticmethod
    def backward(ctx, grad: Tensor):
        (sigma,) = ctx.saved_tensors
        return torch.mul(grad, sigma).mul_(2.0), None


class _SampleOutput(torch.autograd.Function):
    """``mean + sqrt(variance) * eps`` with eps ~ N(0, 1), written into ``mean``, and its hand-written backward.

    This runs on every pre-activation (for a convolution, far more entries than weights), so it makes as few
    full-size passes and allocations as it can: the variance arrives with its floor already added (through
    the operation's bias), the sample is written over ``mean`` (a fresh output of the layer's operation,
    which nothing else keeps), and the noise is drawn as eps/2 ~ N(0, 1/4), which is exact in floating point
    (the same draws as ``randn_like``, halved), so its buffer ends up holding d out / d variance = eps / (2 std).
    """

    @staticmethod
    def forward(ctx, mean: Tensor, variance: Tensor) -> Tensor:
        std = variance.sqrt()
        half_eps = torch.empty_like(mean).normal_(0.0, 0.5)
        ctx.mark_dirty(mean)
        out = mean.addcmul_(std, half_eps, value=2.0)
        ctx.save_for_backward(half_eps.div_(std))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (dout_dvariance,) = ctx.saved_tensors
        return grad, grad * dout_dvariance


def inverse_softplus(sigma: Tensor) -> Tensor:
    """rho with softplus(rho) = sigma, computed in float64 because expm1 of a tiny sigma loses digits."""
    s = sigma.double()
    return torch.where(s > 20, s, torch.log(torch.expm1(s))).to(sigma.dtype)


def _scale_channels(x: Tensor, factor: Tensor | None, spatial_dims: int) -> Tensor:
    """x times a per-channel factor on the channel dimension: the last one of a linear layer's input (so
    (batch, tokens, features) works), the one before the ``spatial_dims`` trailing ones of a convolution's, and
    dim 1 of either weight."""
    if factor is None:
        return x
    return x * factor.view(-1, *([1] * spatial_dims))


def calls_forward(module: nn.Module, args: tuple) -> None:
    """A forward pre-hook that does nothing: fused fast paths (``nn.TransformerEncoderLayer`` in eval mode)
    read their submodules' weights directly unless a hook is attached, which would skip sampling and masks."""


_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called")


def user_hooks(module: nn.Module) -> dict[str, dict]:
    """The forward hooks and pre-hooks a user registered on ``module`` (not a Bayesian layer's own, nor torch's
    prune masks), per hook table that holds any: part of the function, which a copy of the layer must carry."""
    ours = {key for key, hook in module._forward_pre_hooks.items()
            if hook is calls_forward or isinstance(hook, prune.BasePruningMethod)}
    tables = {table: {key: value for key, value in getattr(module, table, {}).items() if key not in ours}
              for table in _HOOK_DICTS}
    return {table: hooks for table, hooks in tables.items() if hooks}


def _scale_posterior_(mean: Tensor, rho: Tensor, factor: Tensor) -> None:
    """mu <- factor mu, sigma <- |factor| sigma (kept above a floor so rho stays finite where factor is 0)."""
    sigma = F.softplus(rho) * factor.abs()
    mean.mul_(factor)
    rho.copy_(inverse_softplus(sigma.clamp_min(_SIGMA_FLOOR)))


class BayesianLayer(nn.Module):
    """The shared core: a posterior N(mu, softplus(rho)^2) over ``weight`` and ``bias``.

    Subclasses supply only :meth:`_op`, the deterministic operation (linear map or convolution). In
    training mode (or inside :func:`bayescompress.nn.mc_sampling`) the forward pass samples, by ``estimator``:

    - ``"lrt"`` (default): the local reparameterisation trick, pre-activations drawn from their Gaussian,
      mean ``op(x, mu) + b``, variance ``op(x^2, sigma^2) + sigma_b^2``, independently per example;
    - ``"flipout"``: one weight perturbation ``sigma * eps`` per pass, decorrelated across examples by random
      signs on each example's inputs and outputs: ``op(x, mu) + b + s_out * op(s_in * x, sigma * eps)``;
    - ``"shared"``: one weight sample for the whole batch, ``op(x, mu + sigma * eps) + b + sigma_b * eps_b``:
      one operation per pass, but every example sees the same weights (higher-variance gradients).

    In eval mode it returns the posterior-mean output ``op(x, mu) + b``.
    """

    prior: Prior
    spatial_dims: int  # trailing dimensions after the channel one: 0 for Linear, 2 for Conv2d

    def __init__(self, *args, prior: Prior | None = None, init: PosteriorInit | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_posterior(prior, init)

    def _setup_posterior(self, prior: Prior | None, init: PosteriorInit | None) -> None:
        init = init or PosteriorInit()
        self.mc_sample = False
        self.estimator = "lrt"
        # inside nn.shared_sigma: softplus(rho) per parameter name, computed once per value of rho
        self._sigma_memo: dict[str, tuple[int, Tensor]] | None = None
        self.weight_rho = nn.Parameter(torch.empty_like(self.weight))
        if self.bias is not None:
            self.bias_rho = nn.Parameter(torch.empty_like(self.bias))
        else:
            self.register_parameter("bias_rho", None)
        self.reset_sigma_(init)
        self.prior = (prior if prior is not None else GaussianPrior()).to(self.weight.device)
        self.prior.attach(self)
        self.prior.to(self.weight.device)  # what attach made, on the layer's device (a CUDA layer's too)
        self.register_forward_pre_hook(calls_forward)

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _sigma(self, name: str) -> Tensor:
        rho = getattr(self, name)
        memo = self._sigma_memo
        if memo is None:
            return softplus(rho)
        # the version changes with every in-place update (an optimiser step), so a stale sigma is never reused
        if name not in memo or memo[name][0] != rho._version:
            memo[name] = (rho._version, softplus(rho))
        return memo[name][1]

    @property
    def weight_sigma(self) -> Tensor:
        """Posterior standard deviation of every weight, softplus(weight_rho)."""
        return self._sigma("weight_rho")

    @property
    def bias_sigma(self) -> Tensor | None:
        """Posterior standard deviation of every bias (None without a bias)."""
        return None if self.bias_rho is None else self._sigma("bias_rho")

    @property
    def weight_keep(self) -> Tensor | None:
        """The 0/1 keep mask that ``torch.nn.utils.prune`` registered on ``weight``, if any."""
        return getattr(self, "weight_mask", None)

    def _variance(self, name: str, keep: Tensor | None) -> Tensor:
        """softplus(rho)^2 zeroed where ``keep`` is 0, from the shared sigma inside :func:`shared_sigma`."""
        if self._sigma_memo is not None:
            return _MaskedSquare.apply(self._sigma(name), keep)
        return _SoftplusSquared.apply(getattr(self, name), keep)

    def weight_variance(self) -> Tensor:
        """sigma^2 with pruned entries zeroed, so a pruned weight is exactly 0 in every sample."""
        return self._variance("weight_rho", self.weight_keep)

    def _bias_variance_with_floor(self) -> Tensor:
        """The bias variance plus the pre-activations' variance floor: added through the operation's bias, the
        floor costs no pass over the output."""
        if self.bias_rho is None:
            return torch.full((self.weight.shape[0],), _VARIANCE_FLOOR, dtype=self.weight.dtype,
                              device=self.weight.device)
        return self._variance("bias_rho", None) + _VARIANCE_FLOOR

    def forward(self, x: Tensor) -> Tensor:
        sample = self.training or self.mc_sample
        x = _scale_channels(x, self.prior.input_multiplier(self, sample), self.spatial_dims)
        if not sample:
            out = self._op(x, self.weight, self.bias)
        elif self.estimator == "lrt":
            variance = self._op(x * x, self.weight_variance(), self._bias_variance_with_floor())
            out = _SampleOutput.apply(self._op(x, self.prior.sampled_weight_mean(self), self.bias), variance)
        else:
            out = self._perturbed(x, self.prior.sampled_weight_mean(self))
        return _scale_channels(out, self.prior.unit_multiplier(self, sample), self.spatial_dims)

    def set_estimator_(self, estimator: str) -> BayesianLayer:
        """Choose how training passes sample (one of :data:`ESTIMATORS`; see the class docstring)."""
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}; got {estimator!r}")
        self.estimator = estimator
        return self

    def _perturbed(self, x: Tensor, weight: Tensor) -> Tensor:
        """A pass with one sampled perturbation of the weight mean ``weight``: shared by the batch, or flipped
        per example."""
        sigma = self.weight_sigma
        if self.weight_keep is not None:
            sigma = sigma * self.weight_keep  # a pruned weight stays exactly 0
        weight_noise = sigma * torch.randn_like(sigma)
        bias_noise = None if self.bias_rho is None else self.bias_sigma * torch.randn_like(self.bias_rho)
        if self.estimator == "shared":
            bias = self.bias if bias_noise is None else self.bias + bias_noise
            return self._op(x, weight + weight_noise, bias)
        mean = self._op(x, weight, self.bias)
        perturbation = self._op(x * self._random_signs(x), weight_noise, bias_noise)
        return mean + perturbation * self._random_signs(mean)

    def _random_signs(self, t: Tensor) -> Tensor:
        """Flipout's +-1 per example and channel of ``t``; a linear layer's every leading index is an example."""
        shape = t.shape if self.spatial_dims == 0 else (*t.shape[:2], *([1] * self.spatial_dims))
        return torch.empty(shape, dtype=t.dtype, device=t.device).bernoulli_(0.5).mul_(2).sub_(1)

    @torch.no_grad()
    def scale_posterior_(self, units: Tensor | None = None, inputs: Tensor | None = None) -> BayesianLayer:
        """Multiply the posterior of weight (j, i) by u_j v_i and of bias j by u_j; returns the layer.

        mu <- u v mu and sigma <- |u v| sigma, i.e. the posterior of the scaled variable. ``units`` (u, one
        per output unit) and ``inputs`` (v, one per input channel) default to ones.
        """
        weight = getattr(self, "weight_orig", self.weight)  # the Parameter, also when a prune mask is registered
        factor = torch.ones_like(weight)
        if units is not None:
            factor = factor * units.view(-1, *([1] * (weight.dim() - 1)))
        if inputs is not None:
            factor = _scale_channels(factor, inputs, weight.dim() - 2)
        _scale_posterior_(weight, self.weight_rho, factor)
        if self.bias is not None and units is not None:
            _scale_posterior_(self.bias, self.bias_rho, units)
        return self

    @torch.no_grad()
    def reset_sigma_(self, init: PosteriorInit) -> BayesianLayer:
        """Restart the posterior standard deviations from the current means as conversion does; returns the layer."""
        weight = getattr(self, "weight_orig", self.weight)
        self.weight_rho.copy_(inverse_softplus(init.sigma(weight)))
        if self.bias is not None:
            self.bias_rho.copy_(inverse_softplus(init.sigma(self.bias)))
        return self

    @torch.no_grad()
    def fold_multipliers_(self, prior: Prior) -> BayesianLayer:
        """Fold the prior's point multipliers into the posterior and switch to ``prior``; returns the layer.

        Unit factor u_j and input factor v_i (spike-and-slab gates times scales) become part of the
        weights (:meth:`scale_posterior_`). The eval-mode function is unchanged, and what follows (masked
        fine-tuning, pruning scores, export) sees ordinary weights.
        """
        self.scale_posterior_(self.prior.unit_multiplier(self, sample=False),
                              self.prior.input_multiplier(self, sample=False))
        self.prior = prior.to(self.weight.device)
        prior.attach(self)
        prior.to(self.weight.device)
        return self

    def kl(self) -> Tensor:
        """KL(q || prior) of this layer, summed."""
        return self.prior.kl(self)

    @classmethod
    def convert_(cls, module: nn.Module, prior: Prior, init: PosteriorInit | None = None) -> BayesianLayer:
        """Turn a deterministic ``module`` into this Bayesian class in place and return it.

        Re-classing keeps the very same ``weight``/``bias`` Parameter objects (now the posterior means) and
        every other attribute — stride, padding, hooks — without per-type constructor code.
        """
        module.__class__ = cls
        module._setup_posterior(prior, init)
        return module

    def extra_repr(self) -> str:
        return super().extra_repr() + ", bayesian=True"


class BayesLinear(BayesianLayer, nn.Linear):
    """Bayesian ``nn.Linear``; same constructor plus ``prior=`` and ``init=``.

    Example
    -------
    >>> layer = BayesLinear(3, 2).eval()
    >>> layer(torch.ones(1, 3)).shape
    torch.Size([1, 2])
    """

    spatial_dims = 0

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)


class BayesConv2d(BayesianLayer, nn.Conv2d):
    """Bayesian ``nn.Conv2d``; same constructor plus ``prior=`` and ``init=``.

    Example
    -------
    >>> layer = BayesConv2d(1, 4, 3).eval()
    >>> layer(torch.ones(1, 1, 5, 5)).shape
    torch.Size([1, 4, 3, 3])
    """

    spatial_dims = 2

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self._conv_forward(x, weight, bias)


# Deterministic type -> Bayesian type. Only these exact types are converted and pruned: a subclass (e.g.
# MultiheadAttention's out_proj) may have an owner that reads its weight directly, bypassing forward.
BAYESIAN_TYPES: dict[type[nn.Module], type[BayesianLayer]] = {nn.Linear: BayesLinear, nn.Conv2d: BayesConv2d}


def is_handled_layer(module: nn.Module) -> bool:
    """Whether bayescompress converts, prunes and exports ``module``: a plain ``nn.Linear`` / ``nn.Conv2d``
    (exactly that type) or one of our Bayesian layers."""
    return type(module) in BAYESIAN_TYPES or isinstance(module, BayesianLayer)

