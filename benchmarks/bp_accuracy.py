"""Loopy BP against exact enumeration on 4x4 grids, and the linearised gain behind the weak-evidence warning.

    python benchmarks/bp_accuracy.py [--draws 30]

For each coupling / evidence setting: ``draws`` random unary log-odds (seeds 0..draws-1, N(mean, std^2); mean
logit pi0 at HierarchicalPrior's default is module B's unary, phi0 times evidence of that spread), BP run
to convergence (tol 1e-10), the largest |BP marginal - exact marginal| per draw, and the gain
``evidence_stability`` reports (module B warns above ``WEAK_EVIDENCE_GAIN``); then that gain at the default
couplings and N(0, 1) evidence on grids from 4x4 to 256x256 (3 draws each).
"""

from __future__ import annotations

import argparse
import itertools
import sys

import torch
from _common import save_results

from bayescompress.priors.mrf import (
    FactorGraph,
    TransitionPotential,
    belief_propagation,
    evidence_stability,
)
from bayescompress.inference.turbo import WEAK_EVIDENCE_GAIN
from bayescompress.priors import HierarchicalPrior

LOGIT_DEFAULT_PI0 = float(torch.logit(HierarchicalPrior().pi0))
# (p11, p01, unary mean, unary std)
SETTINGS = [(0.7, 0.3, 0.0, 1.0), (0.7, 0.3, 0.0, 1.5), (0.7, 0.3, 0.0, 2.0), (0.7, 0.3, LOGIT_DEFAULT_PI0, 1.0),
            (0.3, 0.7, 0.0, 0.5), (0.8, 0.2, 0.0, 1.0), (0.9, 0.1, 0.0, 1.0)]
SIDE = 4


def exact_marginals(unary: torch.Tensor, potential: TransitionPotential, states: torch.Tensor) -> torch.Tensor:
    """P(s_n = 1) on the SIDE x SIDE grid by enumerating all 2^(SIDE^2) states."""
    grid = states.view(-1, SIDE, SIDE).long()
    table = potential.log_table
    log_p = states @ unary.reshape(-1) + table[grid[:, :, :-1], grid[:, :, 1:]].sum((1, 2)) \
        + table[grid[:, :-1, :], grid[:, 1:, :]].sum((1, 2))
    return (torch.softmax(log_p, 0)[:, None] * states).sum(0).view(SIDE, SIDE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=30)
    args = parser.parse_args()
    states = torch.tensor(list(itertools.product([0, 1], repeat=SIDE * SIDE)), dtype=torch.float64)
    rows = []
    for p11, p01, mean, std in SETTINGS:
        potential = TransitionPotential(p11, p01)
        graph = FactorGraph.grid((SIDE, SIDE), potential, potential)
        errors, gains = [], []
        for seed in range(args.draws):
            draw = torch.randn((SIDE, SIDE), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            unary = draw * std + mean
            result = belief_propagation(graph, unary, tol=1e-10, max_iter=2000)
            errors.append(float((torch.sigmoid(result.belief) - exact_marginals(unary, potential, states)).abs().max()))
            gains.append(evidence_stability(graph, unary))
        errors_t, gains_t = torch.tensor(errors), torch.tensor(gains)
        rows.append({"p11": p11, "p01": p01, "unary_mean": mean, "unary_std": std, "max_error": float(errors_t.max()),
                     "mean_error": float(errors_t.mean()), "within_0_05": int((errors_t <= 0.05).sum()),
                     "gain_min": float(gains_t.min()), "gain_max": float(gains_t.max()),
                     "warns": int((gains_t > WEAK_EVIDENCE_GAIN).sum())})
        r = rows[-1]
        print(f"p11 {p11} p01 {p01} mean {mean:.2f} std {std}: max error {r['max_error']:.3f}, mean "
              f"{r['mean_error']:.3f}, {r['within_0_05']}/{args.draws} within 0.05, "
              f"gain {r['gain_min']:.2f}-{r['gain_max']:.2f}, "
              f"warns {r['warns']}/{args.draws}", flush=True)
    # the gain grows with the grid: the same evidence and couplings on layer-sized grids
    default = TransitionPotential(0.7, 0.3)
    sizes = []
    for side in (4, 8, 16, 64, 256):
        graph = FactorGraph.grid((side, side), default, default)
        gains = [evidence_stability(graph, torch.randn((side, side), generator=torch.Generator().manual_seed(seed),
                                                      dtype=torch.float64)) for seed in range(3)]
        sizes.append({"side": side, "gain_min": min(gains), "gain_max": max(gains)})
        print(f"default couplings, N(0, 1) evidence, {side}x{side}: gain {min(gains):.2f}-{max(gains):.2f}", flush=True)
    command = "python benchmarks/bp_accuracy.py " + " ".join(sys.argv[1:])
    save_results("bp_accuracy", {"command": command.strip(), "draws": args.draws, "rows": rows, "grid_sizes": sizes})


if __name__ == "__main__":
    main()
