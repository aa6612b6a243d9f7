"""Spike-and-slab group priors over output units: group lasso and group horseshoe (SPEC section 3).

Jantre, Bhattacharya and Maiti (2024): unit j of a layer (row j of the weight matrix, or filter j of a conv,
together with its bias) is one group, written in non-centred form

    w_j = z_j * s_j * beta_j,   z_j ~ Bernoulli(lambda),   beta_j ~ N(0, s0^2 I),

so the layer's ``weight`` / ``bias`` hold the posterior of beta and the prior contributes a per-unit factor
z_j * s_j on the layer's output (:meth:`SpikeSlabPrior.unit_multiplier`). The two families differ in the
scale s_j only. Variational family: q(z_j) = Bernoulli(g_j) with g_j = sigmoid(theta_j), relaxed during
training by a binary Concrete with a straight-through hard sample; every scale variable log-normal; the KL is
closed form.
"""

from __future__ import annotations

import abc
import copy
import math

import torch
from torch import Tensor, nn

from pyro.distributions import RelaxedBernoulliStraightThrough

from bayescompress._validation import check_choice, check_positive, check_probability
from bayescompress.priors.base import Inclusion, Prior
from bayescompress.priors.kl import (
    kl_bernoulli,
    kl_lognormal_gamma,
    kl_lognormal_invgamma,
    kl_normal_normal,
)

# Starting standard deviation of every log-scale variable: the scales start nearly deterministic.
_INIT_LOG_STD = math.log(1e-2)
# Smallest starting scale, for units whose pretrained weights are all zero.
_MIN_INIT_SCALE = 1e-4
# How a unit's slab KL enters the bound: weighted by its gate, or counted whatever the gate (mean field).
SLAB_KLS = ("gated", "mean-field")


def sample_gates(logits: Tensor, temperature: Tensor | float) -> Tensor:
    """One hard 0/1 sample per logit, with the binary-Concrete straight-through gradient.

    Example
    -------
    >>> sample_gates(torch.tensor([20.0, -20.0]), 0.5)
    tensor([1., 0.])
    """
    return RelaxedBernoulliStraightThrough(temperature, logits=logits).rsample()


def point_gates(logits: Tensor) -> Tensor:
    """The gates' point value: 1 where the inclusion probability sigmoid(logit) is at least 1/2, else 0.

    The median of Bernoulli(g), and the decision the inclusion-threshold pruning takes, so the eval-mode
    network equals the network pruned at g < 0.5.
    """
    return (logits >= 0).to(logits.dtype)


class _LogNormal(nn.Module):
    """Variational parameters of independent log-normal variables: log x ~ N(loc, exp(log_std)^2)."""

    def __init__(self, loc: Tensor) -> None:
        super().__init__()
        self.loc = nn.Parameter(loc.detach().clone().float())
        self.log_std = nn.Parameter(torch.full_like(self.loc, _INIT_LOG_STD))

    @property
    def var(self) -> Tensor:
        """Variance of log x."""
        return torch.exp(2 * self.log_std)

    @property
    def mean(self) -> Tensor:
        """E[x] = exp(loc + var/2)."""
        return torch.exp(self.loc + 0.5 * self.var)


class SpikeSlabPrior(Prior, abc.ABC):
    """Shared core of the spike-and-slab group priors: gates, slab, and the scale as a log-normal factor.

    Subclasses define the scale s_j through :meth:`_log_scale_moments` (mean and variance of log s_j, which
    is Gaussian because every scale variable is log-normal), :meth:`_scale_kl`, and optionally
    :meth:`_regularise` (a map applied to s_j).

    Parameters
    ----------
    prior_inclusion:
        lambda, the prior probability that a unit is on, in (0, 1). Small values favour removal.
    slab_scale:
        s0, the standard deviation of the slab N(0, s0^2) over beta (> 0).
    temperature:
        Temperature of the binary Concrete relaxation of the gates (> 0).
    init_inclusion:
        Starting inclusion probability g_j, in (0, 1); near 1 because a pretrained network's units are on, not
        so near that the data's gradient on the gate logit vanishes (0.95, the methods' recipes).
    gate_output_layer:
        Gate the output layer's units too. Off by default: the output layer is slab only and keeps every
        class (``for_position`` turns its gates off when converting a whole network).
    input_gates:
        Also gate the input features (columns of the first layer, input channels of a first conv), with the
        same ``prior_inclusion``, so inputs that carry nothing are removed (Louizos et al. 2017). Only the
        network's first layer gets them (later layers: ``hidden_input_gates``).
    hidden_input_gates:
        Also gate the inputs of every later layer: the input channels of a convolution, the input features of a
        linear layer. An input switched off there removes the unit of the layer before that feeds it, weighed
        against the weights that read it (for LeNet-5's conv1 filters: the 50 x 25 weights of conv2 reading
        each one, not the filter's own 25), as Louizos et al. (2017) gate the inputs of every layer. Grouped
        convolutions are left without them.
    gated:
        Whether this layer's units have gates at all (``for_position`` sets it; rarely set by hand).
    slab_kl:
        ``"gated"``: q(beta_j | z_j = 0) is the slab itself, so unit j's slab KL is weighted by g_j. Switching a
        unit off then saves its whole description cost (thousands of nats for a wide layer), a force on the
        gates that is the same for every unit of a layer and dwarfs the data's (see :meth:`kl`).
        ``"mean-field"``: q(z) q(beta), so the slab KL is counted whatever z_j is; only
        KL(Bern(g_j) || Bern(lambda)) then pulls the gates down, and a unit goes off when the data do not need
        it (the SS-GHS authors' bound; the default, as in the methods' recipes).
    """

    def __init__(
        self,
        prior_inclusion: float = 1e-3,
        slab_scale: float = 1.0,
        temperature: float = 0.5,
        init_inclusion: float = 0.95,
        gate_output_layer: bool = False,
        input_gates: bool = False,
        hidden_input_gates: bool = False,
        gated: bool = True,
        slab_kl: str = "mean-field",
    ) -> None:
        super().__init__()
        check_probability("prior_inclusion", prior_inclusion)
        check_positive("slab_scale", slab_scale)
        check_positive("temperature", temperature)
        check_probability("init_inclusion", init_inclusion)
        check_choice("slab_kl", slab_kl, SLAB_KLS)
        self.register_buffer("prior_inclusion", torch.tensor(float(prior_inclusion)))
        self.register_buffer("slab_scale", torch.tensor(float(slab_scale)))
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.init_inclusion = float(init_inclusion)
        self.gate_output_layer = bool(gate_output_layer)
        self.input_gates = bool(input_gates)
        self.hidden_input_gates = bool(hidden_input_gates)
        self._skip_grouped_inputs = False  # a later layer's input gates give way on a grouped conv
        self.gated = bool(gated)
        self.slab_kl = slab_kl
        self.gate_logit: nn.Parameter | None = None
        self.input_gate_logit: nn.Parameter | None = None

    def for_position(self, first: bool, last: bool) -> SpikeSlabPrior:
        prior = copy.deepcopy(self)
        prior.gated = self.gated and (self.gate_output_layer or not last)
        prior.input_gates = self.input_gates if first else self.hidden_input_gates
        prior._skip_grouped_inputs = not first
        return prior

    # --- the scale, defined by each family ---------------------------------------------------------------
    @abc.abstractmethod
    def _init_scales(self, units: int, group_size: int, scale: Tensor) -> None:
        """Create the scale variables' variational parameters for ``units`` groups of ``group_size`` entries,
        with s_j starting near ``scale[j]``."""

    @abc.abstractmethod
    def _log_scale_moments(self) -> tuple[Tensor, Tensor]:
        """Mean and variance of log s_j under q, each of shape (units,)."""

    @abc.abstractmethod
    def _scale_kl(self) -> Tensor:
        """KL of every scale variable of the layer, summed."""

    def _regularise(self, scale: Tensor) -> Tensor:
        return scale

    # --- the Prior interface ------------------------------------------------------------------------------
    def attach(self, layer) -> None:
        # a Bayesian layer has a posterior rho (checked by attribute: the layers import the priors, not back)
        if not hasattr(layer, "weight_rho") or not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise TypeError(
                f"{type(self).__name__} groups the output units of Bayesian Linear/Conv2d layers "
                f"(bayescompress.nn.BayesLinear, BayesConv2d); it cannot be attached to {type(layer).__name__}"
            )
        weight = getattr(layer, "weight_orig", layer.weight)
        units, group_size = weight.shape[0], weight[0].numel() + (layer.bias is not None)
        if self.input_gates and getattr(layer, "groups", 1) != 1:
            if self._skip_grouped_inputs:
                self.input_gates = False  # a grouped conv's input channels belong to its groups: left ungated
            else:
                raise ValueError("input gates need an ungrouped first layer (groups=1); set input_gates=False")
        logit = math.log(self.init_inclusion / (1 - self.init_inclusion))
        device = weight.device  # attach's own computations already mix these with the layer's tensors
        self.gate_logit = nn.Parameter(torch.full((units,), logit, device=device)) if self.gated else None
        self.input_gate_logit = (nn.Parameter(torch.full((weight.shape[1],), logit, device=device))
                                 if self.input_gates else None)
        rows = torch.cat([weight.detach().flatten(1), layer.bias.detach()[:, None]], 1) if layer.bias is not None \
            else weight.detach().flatten(1)
        # each unit's scale starts at its pretrained root-mean-square weight, so beta starts O(1) and the
        # slab N(0, s0^2) is the right size for it; beta = w / s keeps the layer's function
        self._init_scales(units, group_size, rows.pow(2).mean(1).sqrt().clamp_min(_MIN_INIT_SCALE))
        layer.scale_posterior_(units=1.0 / self._point_scale().detach())

    def _point_scale(self) -> Tensor:
        """exp(E[log s]), the median of the log-normal scale, after the family's map."""
        return self._regularise(torch.exp(self._log_scale_moments()[0]))

    def _sampled_scale(self) -> Tensor:
        mean, var = self._log_scale_moments()
        return self._regularise(torch.exp(mean + var.sqrt() * torch.randn_like(mean)))

    def _gates(self, logit: Tensor, sample: bool) -> Tensor:
        return sample_gates(logit, self.temperature) if sample else point_gates(logit)

    def unit_multiplier(self, layer, sample: bool) -> Tensor:
        scale = self._sampled_scale() if sample else self._point_scale()
        return scale if self.gate_logit is None else self._gates(self.gate_logit, sample) * scale

    def input_multiplier(self, layer, sample: bool) -> Tensor | None:
        return None if self.input_gate_logit is None else self._gates(self.input_gate_logit, sample)

    def kl(self, layer) -> Tensor:
        """sum_j KL(Bern(g_j) || Bern(lambda)) + sum_j g_j KL(q(beta_j) || N(0, s0^2 I)) + the scales' KLs.

        With ``slab_kl="gated"``: a unit that is off leaves beta_j unconstrained by the data, so its optimal
        q(beta_j) is the slab itself, hence the slab KL weighted by g_j (input gates weight their columns the
        same way). With ``"mean-field"`` the weights g_j are 1: q(beta) does not depend on z.

        Example
        -------
        >>> from bayescompress.nn import BayesLinear
        >>> gated = BayesLinear(6, 4, prior=SpikeSlabGroupLasso(slab_kl="gated"))
        >>> mean_field = BayesLinear(6, 4, prior=SpikeSlabGroupLasso())
        >>> mean_field.load_state_dict(gated.state_dict())
        <All keys matched successfully>
        >>> bool(mean_field.kl() > gated.kl())
        True
        """
        slab = kl_normal_normal(layer.weight, layer.weight_sigma, self.slab_scale)
        keep = layer.weight_keep
        if keep is not None:
            slab = torch.where(keep.bool(), slab, torch.zeros((), dtype=slab.dtype, device=slab.device))
        total = self._scale_kl()
        mean_field = self.slab_kl == "mean-field"
        if self.input_gate_logit is not None:
            included = torch.sigmoid(self.input_gate_logit)
            if not mean_field:
                slab = slab * included.view(1, -1, *([1] * (slab.dim() - 2)))
            total = total + kl_bernoulli(included, self.prior_inclusion).sum()
        per_unit = slab.flatten(1).sum(1)
        if layer.bias is not None:
            per_unit = per_unit + kl_normal_normal(layer.bias, layer.bias_sigma, self.slab_scale)
        if self.gate_logit is None:
            return total + per_unit.sum()
        included = torch.sigmoid(self.gate_logit)
        slab_total = per_unit.sum() if mean_field else torch.dot(included, per_unit)
        return total + slab_total + kl_bernoulli(included, self.prior_inclusion).sum()

    @torch.no_grad()
    def inclusion(self, layer) -> Inclusion:
        """Per unit: g_j (1 where ungated); per input: the input gates' g, where the inputs are gated."""
        unit = (torch.ones(layer.weight.shape[0], device=layer.weight.device) if self.gate_logit is None
                else torch.sigmoid(self.gate_logit).detach().clone())
        inputs = None if self.input_gate_logit is None else torch.sigmoid(self.input_gate_logit).detach().clone()
        return Inclusion(unit=unit, input=inputs)

    @torch.no_grad()
    def statistics(self, layer) -> dict[str, Tensor]:
        """Per-weight SNR statistics of beta, and per unit: ``unit_inclusion`` g_j (1 where ungated) and
        ``unit_scale`` (the point value of s_j); ``input_inclusion`` when the inputs are gated."""
        stats = super().statistics(layer)
        inclusion = self.inclusion(layer)
        stats["unit_inclusion"] = inclusion.unit
        stats["unit_scale"] = self._point_scale().detach().clone()
        if inclusion.input is not None:
            stats["input_inclusion"] = inclusion.input
        return stats

    def extra_repr(self) -> str:
        return (
            f"prior_inclusion={float(self.prior_inclusion):.3g}, slab_scale={float(self.slab_scale):.3g}, "
            f"temperature={float(self.temperature):.3g}, gated={self.gated}, input_gates={self.input_gates}, "
            f"hidden_input_gates={self.hidden_input_gates}, "
            f"slab_kl={self.slab_kl!r}"
        )


class SpikeSlabGroupLasso(SpikeSlabPrior):
    """Spike-and-slab group lasso (SS-GL): s_j = sqrt(tau_j^2), tau_j^2 ~ Gamma((m_j + 1)/2, rate lam^2/2),
    and a layer-wide lam^2 ~ Gamma(c, rate d); m_j is the group size (fan-in, plus 1 with a bias).

    Marginally each group then has the group-lasso density proportional to exp(-lam ||w_j||): the whole
    unit shrinks together. q(tau_j^2) and q(lam^2) are log-normal.

    Parameters
    ----------
    lam2_shape, lam2_rate:
        c and d of the Gamma prior on lam^2 (> 0; defaults 4 and 2).
    Other parameters: see :class:`SpikeSlabPrior`.

    Example
    -------
    >>> from bayescompress.nn import BayesLinear
    >>> layer = BayesLinear(6, 4, prior=SpikeSlabGroupLasso(prior_inclusion=0.01))
    >>> layer.prior.statistics(layer)["unit_inclusion"]
    tensor([0.9500, 0.9500, 0.9500, 0.9500])
    """

    def __init__(self, *args, lam2_shape: float = 4.0, lam2_rate: float = 2.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_positive("lam2_shape", lam2_shape)
        check_positive("lam2_rate", lam2_rate)
        self.register_buffer("lam2_shape", torch.tensor(float(lam2_shape)))
        self.register_buffer("lam2_rate", torch.tensor(float(lam2_rate)))
        self.register_buffer("group_shape", torch.tensor(1.0))

    def _init_scales(self, units: int, group_size: int, scale: Tensor) -> None:
        self.group_shape.fill_((group_size + 1) / 2)
        self.tau2 = _LogNormal(2 * scale.log())
        # lam^2 starts near its closed-form optimum given tau^2: about (group size + 1) / mean(tau^2)
        self.lam2 = _LogNormal(math.log(group_size + 1) - (scale**2).mean().log())

    def _log_scale_moments(self) -> tuple[Tensor, Tensor]:
        return 0.5 * self.tau2.loc, 0.25 * self.tau2.var

    def _scale_kl(self) -> Tensor:
        # E over q(lam^2) of KL(q(tau^2) || Gamma(shape, lam^2/2)): rate E[lam^2]/2, log-rate E[log lam^2] - log 2
        local = kl_lognormal_gamma(self.tau2.loc, self.tau2.var, self.group_shape,
                                   0.5 * self.lam2.mean, self.lam2.loc - math.log(2.0))
        layer_wide = kl_lognormal_gamma(self.lam2.loc, self.lam2.var, self.lam2_shape, self.lam2_rate)
        return local.sum() + layer_wide


class SpikeSlabGroupHorseshoe(SpikeSlabPrior):
    """Spike-and-slab group horseshoe (SS-GHS): s_j = g * t_j with t_j ~ C+(0, A1) per unit and a layer-wide
    g ~ C+(0, A0), optionally through the regularised slab s~ = c s / sqrt(c^2 + s^2).

    Each half-Cauchy is written as t^2 = a b with a ~ Gamma(1/2, rate 1/A^2) and b ~ InvGamma(1/2, 1), which
    makes every KL closed form with log-normal q(a), q(b). The horseshoe's heavy tails leave large units
    almost unshrunk while pulling small ones hard towards zero; the regularised slab caps the scale at c so
    the tails cannot blow a weight up.

    Parameters
    ----------
    global_scale:
        A0, the scale of the layer-wide half-Cauchy (> 0).
    local_scale:
        A1, the scale of the per-unit half-Cauchy (> 0).
    slab_regulariser:
        c of the regularised slab (> 0), or None for the plain horseshoe.
    Other parameters: see :class:`SpikeSlabPrior`.

    Example
    -------
    >>> from bayescompress.nn import BayesLinear
    >>> layer = BayesLinear(6, 4, prior=SpikeSlabGroupHorseshoe())
    >>> bool(layer.kl() > 0)
    True
    """

    def __init__(
        self,
        *args,
        global_scale: float = 1.0,
        local_scale: float = 1.0,
        slab_regulariser: float | None = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_positive("global_scale", global_scale)
        check_positive("local_scale", local_scale)
        if slab_regulariser is not None:
            check_positive("slab_regulariser", slab_regulariser)
        self.register_buffer("global_scale", torch.tensor(float(global_scale)))
        self.register_buffer("local_scale", torch.tensor(float(local_scale)))
        self.slab_regulariser = None if slab_regulariser is None else float(slab_regulariser)

    def _init_scales(self, units: int, group_size: int, scale: Tensor) -> None:
        # the layer-wide factor carries the geometric mean of the starting scales, the local one the rest
        log_global = scale.log().mean()
        self.global_a, self.global_b = _LogNormal(2 * log_global), _LogNormal(scale.new_zeros(()))
        self.local_a = _LogNormal(2 * (scale.log() - log_global))
        self.local_b = _LogNormal(scale.new_zeros(units))

    def _log_scale_moments(self) -> tuple[Tensor, Tensor]:
        # log s_j = (log a_g + log b_g + log a_j + log b_j) / 2, a sum of independent Gaussians
        factors = (self.global_a, self.global_b, self.local_a, self.local_b)
        mean = 0.5 * sum(f.loc for f in factors)
        var = 0.25 * sum(f.var for f in factors)
        return mean, var

    def _half_cauchy_kl(self, a: _LogNormal, b: _LogNormal, scale: Tensor) -> Tensor:
        return (kl_lognormal_gamma(a.loc, a.var, 0.5, scale**-2).sum()
                + kl_lognormal_invgamma(b.loc, b.var, 0.5, 1.0).sum())

    def _scale_kl(self) -> Tensor:
        return (self._half_cauchy_kl(self.local_a, self.local_b, self.local_scale)
                + self._half_cauchy_kl(self.global_a, self.global_b, self.global_scale))

    def _regularise(self, scale: Tensor) -> Tensor:
        if self.slab_regulariser is None:
            return scale
        c = self.slab_regulariser
        return c * scale / torch.sqrt(c * c + scale * scale)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", global_scale={float(self.global_scale):.3g}, "
                f"local_scale={float(self.local_scale):.3g}, slab_regulariser={self.slab_regulariser}")
