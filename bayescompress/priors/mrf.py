"""The support prior of Turbo-VBI's hierarchy: a binary pairwise Markov random field, its sum-product belief
propagation (module B) and Gibbs sampling (SPEC section 2).

A :class:`FactorGraph` is a set of binary nodes (a tensor shape, e.g. a layer's ``(out, fan_in)`` grid) and
families of pairwise factors. Each family is a set of edges (first endpoint, second endpoint) that share one
potential ``psi(s_first, s_second) = P(s_second | s_first)`` (:class:`TransitionPotential`). Edges are either
*shifts* along one tensor dimension (the rows or the columns of a grid, a chain: pure slicing, no indexing)
or explicit index pairs (any graph, e.g. a tree). Every computation works on whole families at once, so the
only Python loops are over iterations and over the (two, for a grid) edge families.

All quantities are log-odds: a unary ``h_n = log phi_n(1) / phi_n(0)``, a message
``lambda_{n->m} = log m(s_m = 1) / m(s_m = 0)``, a belief ``b_n = h_n + sum of incoming messages``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from bayescompress._validation import check_in_range, check_positive_int, check_probability


# Log-odds beyond which a message no longer changes (to within e^-50).
_SATURATION = 50.0


class BeliefPropagationWarning(UserWarning):
    """Loopy BP did not converge, or runs where its answer may be a single mode of a bimodal posterior."""


class TransitionPotential:
    """psi(s, s') = P(s' | s) of a binary Markov chain step: P(1 | 1) = ``p11``, P(1 | 0) = ``p01``.

    ``log_table[s, s']`` is log psi(s, s'). p11 > p01 couples neighbours attractively (clusters), p11 < p01
    repulsively, p11 = p01 not at all.

    Example
    -------
    >>> TransitionPotential(0.7, 0.3).coupling   # the equivalent Ising coupling J
    0.4236...
    """

    def __init__(self, p11: float, p01: float) -> None:
        for name, value in (("p11", p11), ("p01", p01)):
            check_probability(name, value)
        self.p11, self.p01 = float(p11), float(p01)
        self.log_table = torch.tensor([[math.log1p(-p01), math.log(p01)], [math.log1p(-p11), math.log(p11)]],
                                      dtype=torch.float64)

    @property
    def coupling(self) -> float:
        """J = log(psi00 psi11 / (psi01 psi10)) / 4: the strength of the pairwise interaction."""
        t = self.log_table
        return float(t[0, 0] + t[1, 1] - t[0, 1] - t[1, 0]) / 4

    @staticmethod
    def _constants(table: Tensor) -> tuple[float, float, float]:
        # lambda(h) = log(t01 + t11 e^h) - log(t00 + t10 e^h) = offset + log((1 + e^(h + up)) / (1 + e^(h + down)))
        return float(table[0, 1] - table[0, 0]), float(table[1, 1] - table[0, 1]), float(table[1, 0] - table[0, 0])

    def message(self, cavity: Tensor, forward: bool) -> Tensor:
        """The message to one endpoint given the other endpoint's cavity log-odds (first -> second when
        ``forward``, else second -> first)."""
        offset, up, down = self._constants(self.log_table if forward else self.log_table.T)
        # one exp and one log per message (two softplus would cost two of each); beyond |h| = 50 the message
        # has saturated to within e^-50, so the clamp only keeps exp finite
        t = torch.clamp(cavity, -_SATURATION, _SATURATION).exp_()
        numerator = t.mul(math.exp(up)).add_(1.0)
        return numerator.div_(t.mul_(math.exp(down)).add_(1.0)).log_().add_(offset)

    def message_slope(self, cavity: Tensor, forward: bool) -> Tensor:
        """d message / d cavity (bounded by tanh|J| in absolute value)."""
        _, up, down = self._constants(self.log_table if forward else self.log_table.T)
        return torch.sigmoid(cavity + up).sub_(torch.sigmoid(cavity + down))

    def conditional(self, state: Tensor, forward: bool) -> Tensor:
        """log-odds contribution of a neighbour in 0/1 ``state`` (the first endpoint when ``forward``)."""
        table = self.log_table if forward else self.log_table.T
        at0, at1 = float(table[0, 1] - table[0, 0]), float(table[1, 1] - table[1, 0])
        return state * (at1 - at0) + at0

    def __repr__(self) -> str:
        return f"TransitionPotential(p11={self.p11:g}, p01={self.p01:g})"


class ShiftEdges:
    """Edges between consecutive entries along dimension ``dim`` of the node tensor (a grid's rows or columns)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def count(self, shape: torch.Size) -> int:
        return math.prod(shape) // shape[self.dim] * max(shape[self.dim] - 1, 0)

    def message_shape(self, shape: torch.Size) -> torch.Size:
        return torch.Size(n - 1 if d == self.dim else n for d, n in enumerate(shape))

    def first(self, nodes: Tensor) -> Tensor:
        return nodes.narrow(self.dim, 0, nodes.shape[self.dim] - 1)

    def second(self, nodes: Tensor) -> Tensor:
        return nodes.narrow(self.dim, 1, nodes.shape[self.dim] - 1)

    def add_to_first_(self, nodes: Tensor, messages: Tensor) -> None:
        self.first(nodes).add_(messages)

    def add_to_second_(self, nodes: Tensor, messages: Tensor) -> None:
        self.second(nodes).add_(messages)


class IndexEdges:
    """Explicit edges ``(first[e], second[e])`` between flat node indices: any graph, e.g. a tree."""

    def __init__(self, first: Tensor, second: Tensor) -> None:
        first, second = torch.as_tensor(first, dtype=torch.long), torch.as_tensor(second, dtype=torch.long)
        if first.shape != second.shape or first.dim() != 1:
            raise ValueError("edge endpoint lists must be 1-D and of equal length")
        if (first == second).any():
            raise ValueError("an edge joins a node to itself; a pairwise factor needs two distinct nodes")
        self.first_index, self.second_index = first, second

    def count(self, shape: torch.Size) -> int:
        return self.first_index.numel()

    def message_shape(self, shape: torch.Size) -> torch.Size:
        return self.first_index.shape

    def first(self, nodes: Tensor) -> Tensor:
        return nodes.reshape(-1)[self.first_index]

    def second(self, nodes: Tensor) -> Tensor:
        return nodes.reshape(-1)[self.second_index]

    def add_to_first_(self, nodes: Tensor, messages: Tensor) -> None:
        nodes.view(-1).index_add_(0, self.first_index, messages)

    def add_to_second_(self, nodes: Tensor, messages: Tensor) -> None:
        nodes.view(-1).index_add_(0, self.second_index, messages)


class FactorGraph:
    """Binary nodes of a given ``shape`` and families of pairwise factors ``(edges, potential)``.

    Build one with :meth:`grid` (the default for a layer), :meth:`chain` (a chain per row),
    :meth:`independent` (no edges) or :meth:`from_edges` (any graph). ``colouring`` (one colour per node, no
    edge inside a colour) enables :func:`gibbs_sample`; the grid constructors supply the checkerboard.

    Example
    -------
    >>> g = FactorGraph.grid((3, 4), rows=TransitionPotential(0.7, 0.3), columns=TransitionPotential(0.7, 0.3))
    >>> g.num_edges
    17
    """

    def __init__(self, shape, families, colouring: Tensor | None = None) -> None:
        self.shape = torch.Size(shape)
        if len(self.shape) == 0 or math.prod(self.shape) == 0:
            raise ValueError(f"a factor graph needs at least one node; got shape {tuple(self.shape)}")
        self.families = [(edges, potential) for edges, potential in families]
        for edges, _ in self.families:
            if isinstance(edges, IndexEdges) and edges.count(self.shape) and (
                    max(int(edges.first_index.max()), int(edges.second_index.max())) >= math.prod(self.shape)
                    or min(int(edges.first_index.min()), int(edges.second_index.min())) < 0):
                raise ValueError(f"an edge refers to a node outside 0..{math.prod(self.shape) - 1}")
        if colouring is not None:
            colouring = torch.as_tensor(colouring)
            if colouring.shape != self.shape:
                raise ValueError(f"the colouring has shape {tuple(colouring.shape)}, the nodes {tuple(self.shape)}")
            for edges, _ in self.families:
                if (edges.first(colouring) == edges.second(colouring)).any():
                    raise ValueError("the colouring puts both ends of an edge in one colour; Gibbs sampling "
                                     "updates a colour at once, so no edge may stay inside one")
        self.colouring = colouring

    @property
    def num_edges(self) -> int:
        """Number of pairwise factors of the graph."""
        return sum(edges.count(self.shape) for edges, _ in self.families)

    @classmethod
    def grid(cls, shape, rows: TransitionPotential | None, columns: TransitionPotential | None) -> FactorGraph:
        """A 2-D grid: row edges join (j, i)-(j, i+1), column edges (j, i)-(j+1, i); None leaves a family out."""
        shape = torch.Size(shape)
        if len(shape) != 2:
            raise ValueError(f"a grid needs a 2-D shape (out, fan_in); got {tuple(shape)}")
        families = [(ShiftEdges(dim), p) for dim, p in ((1, rows), (0, columns)) if p is not None]
        parity = (torch.arange(shape[0]).view(-1, 1) + torch.arange(shape[1]).view(1, -1)) % 2
        return cls(shape, families, colouring=parity)

    @classmethod
    def chain(cls, shape, potential: TransitionPotential) -> FactorGraph:
        """One chain per row of a 2-D shape (a single chain for shape (1, n)): the grid without columns."""
        return cls.grid(shape, rows=potential, columns=None)

    @classmethod
    def independent(cls, shape) -> FactorGraph:
        """No pairwise factors: BP returns the unaries."""
        return cls(shape, [], colouring=torch.zeros(torch.Size(shape), dtype=torch.long))

    @classmethod
    def from_edges(cls, num_nodes: int, first, second, potential: TransitionPotential,
                   colouring: Tensor | None = None) -> FactorGraph:
        """``num_nodes`` nodes and the edges ``(first[e], second[e])``, all with one potential."""
        check_positive_int("num_nodes", num_nodes)
        return cls((num_nodes,), [(IndexEdges(first, second), potential)], colouring)

    def incoming(self, forward: list[Tensor], backward: list[Tensor], like: Tensor) -> Tensor:
        """Sum over each node of the messages it receives (``forward[k]`` first -> second in family k), with
        ``like``'s dtype and device."""
        total = torch.zeros(self.shape, dtype=like.dtype, device=like.device)
        for (edges, _), fwd, bwd in zip(self.families, forward, backward):
            edges.add_to_second_(total, fwd)
            edges.add_to_first_(total, bwd)
        return total

    def __repr__(self) -> str:
        parts = ", ".join(f"{type(e).__name__}: {p}" for e, p in self.families)
        return f"FactorGraph(shape={tuple(self.shape)}, {parts or 'no edges'})"


@dataclass
class BPResult:
    """What :func:`belief_propagation` returns (all log-odds, shaped like the nodes).

    ``belief`` is unary + incoming; ``incoming`` the sum of the incoming messages (belief / unary: the
    extrinsic information the graph adds); ``messages`` a warm start for the next call.
    """

    belief: Tensor
    incoming: Tensor
    iterations: int
    residual: float
    converged: bool
    messages: tuple[list[Tensor], list[Tensor]]


def belief_propagation(
    graph: FactorGraph,
    unary: Tensor,
    *,
    damping: float = 0.5,
    tol: float = 1e-4,
    max_iter: int = 50,
    messages: tuple[list[Tensor], list[Tensor]] | None = None,
    name: str = "factor graph",
) -> BPResult:
    """Sum-product loopy BP with a flooding schedule, in log-odds, with damping and a convergence test.

    Every message is recomputed from the previous iteration's messages, then damped:
    ``new = damping * old + (1 - damping) * update``. Stops when the largest change is below ``tol``, or
    after ``max_iter`` iterations with a :class:`BeliefPropagationWarning` that gives the residual. On a
    tree (a chain, a single row) the beliefs are the exact marginal log-odds.

    Example
    -------
    >>> g = FactorGraph.chain((1, 3), TransitionPotential(0.7, 0.3))
    >>> r = belief_propagation(g, torch.tensor([[2.0, 0.0, -2.0]], dtype=torch.float64))
    >>> r.converged, torch.sigmoid(r.belief).shape
    (True, torch.Size([1, 3]))
    """
    check_in_range("damping", damping, 0.0, 1.0, high_inclusive=False)
    check_in_range("tol", tol, 0.0, low_inclusive=False)
    check_positive_int("max_iter", max_iter)
    if unary.shape != graph.shape:
        raise ValueError(f"unary log-odds have shape {tuple(unary.shape)}, the graph's nodes {tuple(graph.shape)}")
    if not torch.isfinite(unary).all():
        raise ValueError(f"{name}: the unary log-odds contain NaN or Inf; check the evidence passed to BP")
    if messages is None:
        forward = [unary.new_zeros(e.message_shape(graph.shape)) for e, _ in graph.families]
        backward = [unary.new_zeros(e.message_shape(graph.shape)) for e, _ in graph.families]
    else:
        expected = [e.message_shape(graph.shape) for e, _ in graph.families]
        if [m.shape for m in messages[0]] != expected or [m.shape for m in messages[1]] != expected:
            raise ValueError(f"{name}: the warm-start messages do not fit this graph (shapes "
                             f"{[tuple(m.shape) for m in messages[0]]}, expected {[tuple(s) for s in expected]})")
        forward, backward = [m.clone() for m in messages[0]], [m.clone() for m in messages[1]]
    residual, iterations, converged = 0.0, 0, not graph.families
    while graph.families and iterations < max_iter:
        belief = graph.incoming(forward, backward, like=unary).add_(unary)
        changes = []
        for k, (edges, potential) in enumerate(graph.families):
            # cavity of an endpoint = its belief without the message that came along this very edge
            new_forward = potential.message(edges.first(belief) - backward[k], forward=True)
            new_backward = potential.message(edges.second(belief) - forward[k], forward=False)
            for old, new in ((forward[k], new_forward), (backward[k], new_backward)):
                if damping:
                    new.mul_(1.0 - damping).add_(old, alpha=damping)
                changes.append((new - old).abs().max() if new.numel() else new.new_zeros(()))
            forward[k], backward[k] = new_forward, new_backward
        iterations += 1
        residual = float(torch.stack(changes).max())
        if not math.isfinite(residual):
            raise FloatingPointError(f"{name}: BP messages became non-finite at iteration {iterations}")
        if residual < tol:
            converged = True
            break
    if not converged:
        warnings.warn(
            f"{name}: loopy BP did not converge in {max_iter} iterations (largest message change {residual:.3g} "
            f"> tol {tol:g}); the beliefs are the last iterate. Raise max_iter or the damping, or weaken the "
            "couplings", BeliefPropagationWarning, stacklevel=2)
    incoming = graph.incoming(forward, backward, like=unary)
    return BPResult(unary + incoming, incoming, iterations, residual, converged, (forward, backward))


@torch.no_grad()
def evidence_stability(graph: FactorGraph, unary: Tensor, iterations: int = 30) -> float:
    """Gain of BP's linearisation at the evidence-only state (all messages 0): the growth factor of a positive
    message perturbation per iteration after ``iterations`` power-iteration steps (an estimate of the
    spectral radius of the linearisation with entries |d message / d cavity| at the unary log-odds; on long
    chains, where perturbations die out only after they cross the chain, it overestimates it).

    Below 1, perturbations of the messages decay and BP settles near the evidence; above 1 the couplings
    amplify them, so BP can lock onto one mode of a bimodal posterior (strong coupling, weak evidence:
    SPEC section 2).
    """
    if not graph.families:
        return 0.0
    slopes = []
    for edges, potential in graph.families:
        slopes.append((potential.message_slope(edges.first(unary), True).abs(),
                       potential.message_slope(edges.second(unary), False).abs()))
    forward = [torch.ones_like(s[0]) for s in slopes]
    backward = [torch.ones_like(s[1]) for s in slopes]
    ratio = 0.0
    for _ in range(iterations):
        total = sum(float(m.sum()) for m in forward + backward)
        if total == 0.0:
            return 0.0
        incoming = graph.incoming(forward, backward, like=unary)
        new_forward, new_backward = [], []
        for (edges, _), (slope_f, slope_b), fwd, bwd in zip(graph.families, slopes, forward, backward):
            new_forward.append(slope_f * (edges.first(incoming) - bwd))
            new_backward.append(slope_b * (edges.second(incoming) - fwd))
        forward, backward = new_forward, new_backward
        ratio = sum(float(m.sum()) for m in forward + backward) / total
    return ratio


def gibbs_sample(graph: FactorGraph, unary: Tensor, sweeps: int = 200,
                 generator: torch.Generator | None = None) -> Tensor:
    """A sample of the MRF ``p(s) ∝ prod exp(unary_n s_n) prod psi(s_first, s_second)`` by Gibbs sampling.

    Nodes of one colour are conditionally independent given the rest, so each sweep updates all of them
    at once (the checkerboard on a grid). Starts from the unaries alone; returns a 0/1 float tensor.
    """
    check_positive_int("sweeps", sweeps)
    if graph.colouring is None:
        raise ValueError("Gibbs sampling needs a node colouring with no edge inside a colour; pass colouring= "
                         "to FactorGraph (the grid constructors supply one)")
    if unary.shape != graph.shape:
        raise ValueError(f"unary log-odds have shape {tuple(unary.shape)}, the graph's nodes {tuple(graph.shape)}")
    colours = graph.colouring.to(unary.device)
    palette = torch.unique(colours).tolist()

    def uniform() -> Tensor:  # drawn on the CPU generator, then moved: a CPU generator cannot fill a GPU tensor
        return torch.rand(graph.shape, generator=generator, dtype=unary.dtype).to(unary.device)

    state = (uniform() < torch.sigmoid(unary)).to(unary.dtype)
    for _ in range(sweeps):
        for colour in palette:
            logits = unary.clone()
            for edges, potential in graph.families:
                edges.add_to_second_(logits, potential.conditional(edges.first(state), forward=True))
                edges.add_to_first_(logits, potential.conditional(edges.second(state), forward=False))
            draw = uniform() < torch.sigmoid(logits)
            state = torch.where(colours == colour, draw.to(unary.dtype), state)
    return state


__all__ = ["BPResult", "BeliefPropagationWarning", "FactorGraph", "IndexEdges", "ShiftEdges", "TransitionPotential",
           "belief_propagation", "evidence_stability", "gibbs_sample"]
