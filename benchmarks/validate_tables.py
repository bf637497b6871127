"""Leave-one-out check of macssim's cost-table interpolation on aiconfigurator-core's
measured H100 tables (run on demand; needs aiconfigurator-core, or an unpacked wheel).

    pip install aiconfigurator-core      # in a separate venv is fine: it pulls pyarrow
    python benchmarks/validate_tables.py                      # H100 SXM, ~15 s
    python benchmarks/validate_tables.py --data-root /tmp/aic/x/aiconfigurator_core/systems
    python benchmarks/validate_tables.py --system h200_sxm --json loo.json

For every measured point (distinct keys; repeated measurements combined by their
median) the point is removed, predicted from the rest by ``macssim.cost`` (log-log
multilinear interpolation, no extrapolation) and compared with the measurement. A point
at the edge of its sweep has no neighbour on one side and cannot be predicted without
extrapolating: those are counted as "edge", not scored.

Removing a point doubles the gap the interpolator bridges there, so these errors are a
pessimistic estimate of the error at a size between two measured neighbours.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from macssim.cost import from_aiconfigurator, leave_one_out

# (label, op, framework, version or None = the package's default, exact-key filter)
CASES = [
    ("GEMM BF16", "gemm", "trtllm", None, {"dtype": "bfloat16"}),
    ("GEMM FP8", "gemm", "trtllm", None, {"dtype": "fp8"}),
    ("fused MoE BF16", "moe", "trtllm", None, {"dtype": "bfloat16"}),
    ("fused MoE, all dtypes", "moe", "trtllm", None, {}),
    ("NCCL all-to-all", "nccl", "nccl", "2.29.2", {"collective": "alltoall"}),
    ("NCCL all-to-all (system default)", "nccl", "nccl", None, {"collective": "alltoall"}),
    ("NCCL all_reduce", "nccl", "nccl", "2.29.2", {"collective": "all_reduce"}),
    ("DeepEP normal", "deepep", "sglang", "0.5.12", {"mode": "normal"}),
    ("DeepEP low-latency", "deepep", "sglang", "0.5.12", {"mode": "low_latency"}),
    ("DeepEP normal, EP8-64", "deepep", "sglang", "0.5.6.post2", {"mode": "normal"}),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="h100_sxm")
    parser.add_argument("--data-root", default=None,
                        help="aiconfigurator_core/systems of an unpacked wheel")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    results = []
    print("| case | source | points | edge | median | p90 | max | within 10 % | "
          "lin-lin within 10 % |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    tables: dict = {}
    for label, op, framework, version, keys in CASES:
        start = time.perf_counter()
        key = (op, framework, version)
        if key not in tables:
            try:
                tables[key] = from_aiconfigurator(op, args.system, framework, version,
                                                  data_root=args.data_root)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"| {label} | {framework}/{version} | – | – | – | – | – | {e} | |")
                continue
        table = tables[key]
        try:
            table = table.select(**keys) if keys else table
        except Exception as e:  # noqa: BLE001
            print(f"| {label} | – | – | – | – | – | – | {e} |")
            continue
        measured, predicted, edge = leave_one_out(table)
        rel = np.abs(predicted - measured) / measured
        row = {
            "case": label, "op": op, "system": args.system, "framework": framework,
            "version": str(table.frame["version"].iloc[0]), "filter": keys,
            "points": int(rel.size), "edge": int(edge),
            "median": float(np.median(rel)), "p90": float(np.quantile(rel, 0.9)),
            "max": float(rel.max()), "within_10pct": float(np.mean(rel <= 0.10)),
            "linear_within_10pct": _linear_baseline(table),
            "seconds": time.perf_counter() - start,
        }
        results.append(row)
        print(f"| {label} | {framework} {row['version']} | {row['points']} | {edge} | "
              f"{row['median']:.1%} | {row['p90']:.1%} | {row['max']:.0%} | "
              f"{row['within_10pct']:.1%} | {_pct(row['linear_within_10pct'])} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


def _linear_baseline(table) -> float | None:
    """The same leave-one-out brackets, joined by a straight line in plain units (time
    against size) instead of log-log: what the log-log choice is measured against. Only
    for ops with one size key (for GEMM the brackets depend on holes in 3-D)."""
    sizes = table.schema.sizes
    if len(sizes) != 1:
        return None
    frame = table.frame.groupby(list(table.schema.exact) + list(sizes), sort=True,
                                as_index=False)["latency_s"].median()
    hits = []
    for _, sweep in frame.groupby(list(table.schema.exact), sort=False):
        x = sweep[sizes[0]].to_numpy()
        y = sweep["latency_s"].to_numpy()
        for i in range(1, len(x) - 1):
            t = (x[i] - x[i - 1]) / (x[i + 1] - x[i - 1])
            guess = y[i - 1] + t * (y[i + 1] - y[i - 1])
            hits.append(abs(guess - y[i]) / y[i] <= 0.10)
    return float(np.mean(hits)) if hits else None


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


if __name__ == "__main__":
    main()
