"""How MACS's unpublished knobs move its result: δ (entropy steepness), ρ (capacity shift),
γ (capacity factor) and what C_base counts (tokens or semantic weight), on the prefill
step of the bundled trace, replayed on 8xH100 (capacity scope ``rank``, the default; expert
labels calibrated in-sample on the same trace). Dropped semantic mass is measured on one
yardstick for MACS and token-drop alike (δ = ``YARDSTICK_DELTA``, not the δ swept here).
Prints a markdown table (docs/policies.md carries its output). Run on demand:

    python benchmarks/macs_sensitivity.py [--trace PATH] [--topology 8xH100]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from macssim._resources import DEFAULT_TRACE
from macssim.policies import YARDSTICK_DELTA
from macssim.replay import ReplayConfig, replay
from macssim.report import summarize


def row(trace: Path, topology: str, gamma: float, params: dict) -> dict:
    res = replay(ReplayConfig(trace=trace, policies=("macs",), topology=topology,
                              capacity_factor=gamma, policy_params={"macs": params},
                              max_steps=1))
    table = summarize(res.layers, res.steps, res.drops, res.policies).set_index("policy")
    drops = res.drops[res.drops.policy == "macs"]
    table.loc["macs", "added_local_frac"] = (drops.rerouted_assignments.sum()
                                             / drops.assignments.sum())
    return {"macs": table.loc["macs"], "token-drop": table.loc["token-drop"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--topology", default="8xH100")
    args = ap.parse_args()
    print(f"semantic mass weighted with δ = {YARDSTICK_DELTA:g} for both policies\n")
    print("| C_base | γ | δ | ρ | MoE latency (µs) | vs token-drop | imbalance "
          "| dropped assignments | added local | no expert left | dropped semantic mass "
          "| vs token-drop |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for basis, gamma, delta, rho in itertools.product(("tokens", "weight"), (0.75, 1.0, 1.25),
                                                      (0.0, 1.0, 4.0), (0.0, 1.0)):
        r = row(args.trace, args.topology, gamma,
                {"delta": delta, "rho": rho, "capacity_basis": basis})
        m, t = r["macs"], r["token-drop"]
        sem = (m.dropped_semantic_mass_frac / t.dropped_semantic_mass_frac
               if t.dropped_semantic_mass_frac else float("nan"))
        print(f"| {basis} | {gamma:g} | {delta:g} | {rho:g} | {m.moe_latency_mean_s * 1e6:.1f} | "
              f"{m.moe_latency_mean_s / t.moe_latency_mean_s:.2f} | {m.imbalance_mean:.2f} | "
              f"{m.dropped_assignments_frac:.1%} | {m.added_local_frac:.1%} | "
              f"{m.tokens_lost_all_frac:.2%} | {m.dropped_semantic_mass_frac:.2%} | "
              f"{sem:.3f} |", flush=True)


if __name__ == "__main__":
    main()
