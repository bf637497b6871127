"""Leave-one-out check of macssim's cost-table interpolation on aiconfigurator-core's
measured H100 tables (run on demand; needs aiconfigurator-core, or an unpacked wheel).

    pip install aiconfigurator-core      # in a separate venv is fine: it pulls pyarrow
    python benchmarks/validate_tables.py                      # H100 SXM, ~15 s
    python benchmarks/validate_tables.py --data-root /tmp/aic/x/aiconfigurator_core/systems
    python benchmarks/validate_tables.py --system h200_sxm --json loo.json
    python benchmarks/validate_tables.py --tables /tmp/tables   # converted {op}.csv files

For every measured point (distinct keys; repeated measurements combined by their
median) the point is removed, predicted from the rest by ``macssim.cost`` (log-log
multilinear interpolation, no extrapolation) and compared with the measurement. A point
at the edge of its sweep has no neighbour on one side and cannot be predicted without
extrapolating: those are counted as "edge", not scored.

Removing a point doubles the gap the interpolator bridges there, so these errors are a
pessimistic estimate of the error at a size between two measured neighbours.

The point is removed from the raw measurements before the monotone envelope (rule 5 of
``macssim/cost/_interpolate.py``) is applied to the rest of its sweep, and the error is
against its raw value: the envelope never sees the point it is judged on.

A second report follows, per operation of the issue's list (``ISSUE_CASES``: NCCL
all-to-all scored at 64 KiB – 512 MiB per rank, DeepEP normal and low-latency EP8 at
128 – 16384 tokens per rank, fused MoE for Qwen3-30B-A3B and Qwen3-235B-A22B on one EP8
rank, balanced and skewed, BF16 GEMM): count, median, p95, max and share within 10 %,
without and with the envelope, and the worst points with their neighbours in the sweep.
Only the scored points are filtered; every prediction uses the whole table.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from macssim.cost import from_aiconfigurator, leave_one_out, load_table
from macssim.cost._interpolate import leave_one_out_points

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
    parser.add_argument("--tables", default=None,
                        help="a folder of macssim tables gemm.csv, moe.csv, nccl.csv, "
                             "deepep.csv (converted already) instead of aiconfigurator")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worst", type=int, default=5,
                        help="worst points listed per issue operation")
    args = parser.parse_args(argv)
    if args.tables:
        results = issue_report(lambda op, framework, version: load_table(
            f"{args.tables}/{op}.csv"), args.worst)
    else:
        results = general_report(args) + issue_report(
            lambda op, framework, version: from_aiconfigurator(
                op, args.system, framework, version, data_root=args.data_root),
            args.worst)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


def general_report(args) -> list[dict]:

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
    return results


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


QWEN3_30B = {"hidden": 2048, "inter": 768, "experts": 128, "topk": 8, "tp": 1, "ep": 8}
QWEN3_235B = {"hidden": 4096, "inter": 1536, "experts": 128, "topk": 8, "tp": 1, "ep": 8}
SKEWED = ("power_law_1.01", "power_law_1.2")

# (label, op, framework, version or None = default, table filter (exact keys; a tuple is
#  "any of"), scored range of the last size key (inclusive) or None = all). The filter
# selects the points scored; the table they are predicted from is the whole op table.
ISSUE_CASES = [
    ("NCCL all-to-all, 64 KiB-512 MiB/rank (2, 4, 8 ranks; half, int8)", "nccl", "nccl",
     None, {"collective": "alltoall"}, (64 * 2**10, 512 * 2**20)),
    ("DeepEP normal EP8, 128-16384 tokens (all shapes, 4-24 SMs)", "deepep", "sglang",
     "0.5.12", {"mode": "normal", "ep": 8}, (128, 16384)),
    ("DeepEP low-latency EP8, 128-16384 tokens (measured to 1024)", "deepep", "sglang",
     "0.5.12", {"mode": "low_latency", "ep": 8}, (128, 16384)),
    ("fused MoE Qwen3-30B-A3B EP8 rank, balanced", "moe", "trtllm", None,
     {**QWEN3_30B, "distribution": "balanced"}, None),
    ("fused MoE Qwen3-30B-A3B EP8 rank, skewed", "moe", "trtllm", None,
     {**QWEN3_30B, "distribution": SKEWED}, None),
    ("fused MoE Qwen3-235B-A22B EP8 rank, balanced", "moe", "trtllm", None,
     {**QWEN3_235B, "distribution": "balanced"}, None),
    ("fused MoE Qwen3-235B-A22B EP8 rank, skewed", "moe", "trtllm", None,
     {**QWEN3_235B, "distribution": SKEWED}, None),
    ("GEMM BF16 (all shapes)", "gemm", "trtllm", None, {"dtype": "bfloat16"}, None),
]


def issue_report(load, worst: int) -> list[dict]:
    """Per operation of ISSUE_CASES: leave-one-out without and with the monotone
    envelope, and the worst points (with the envelope) beside their sweep neighbours."""
    print("\n| operation | points | edge | envelope | median | p95 | max | within 10 % |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    loo: dict = {}
    results, worst_lines = [], []
    for label, op, framework, version, keys, scored in ISSUE_CASES:
        key = (op, framework, version)
        if key not in loo:
            table = load(op, framework, version)
            if version is not None and "version" in table.frame:
                table = table.select(version=version) \
                    if table.frame["version"].nunique() > 1 else table
            loo[key] = (table, {m: leave_one_out_points(table, monotone=m)
                                for m in (False, True)})
        table, frames = loo[key]
        size = table.schema.sizes[-1]
        for monotone in (False, True):
            frame = _filter(frames[monotone], keys, size, scored)
            scored_rows = frame.dropna(subset=["predicted_s"])
            rel = (scored_rows["predicted_s"] - scored_rows["measured_s"]).abs() \
                / scored_rows["measured_s"]
            row = {"operation": label, "op": op, "filter": _jsonable(keys),
                   "scored_range": scored, "monotone_envelope": monotone,
                   "points": int(rel.size), "edge": int(len(frame) - rel.size),
                   "median": float(rel.median()), "p95": float(rel.quantile(0.95)),
                   "max": float(rel.max()), "within_10pct": float((rel <= 0.10).mean())}
            results.append(row)
            print(f"| {label} | {row['points']} | {row['edge']} | "
                  f"{'yes' if monotone else 'no'} | {row['median']:.1%} | "
                  f"{row['p95']:.1%} | {row['max']:.0%} | {row['within_10pct']:.1%} |")
            if monotone:
                worst_lines.append(_worst(label, table, frames[True], scored_rows, rel,
                                          size, worst))
    print("\nWorst points (with the envelope). The sweep along the last size key "
          "(GEMM: the key it is bracketed in) around each, raw measurements in µs; "
          "[x] = the left-out point, → its prediction:")
    for lines in worst_lines:
        print("\n".join(lines))
    return results


def _filter(frame: pd.DataFrame, keys: dict, size: str, scored) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    for col, want in keys.items():
        mask &= frame[col].isin(want if isinstance(want, tuple) else (want,))
    if scored is not None:
        mask &= frame[size].between(*scored)
    return frame[mask]


def _worst(label, table, frame, scored_rows, rel, size, worst) -> list[str]:
    schema = table.schema
    lines = [f"\n{label}:"]
    for idx in rel.sort_values(ascending=False).index[:worst]:
        point = scored_rows.loc[idx]
        # The sweep along the last size key, or (GEMM, a point at the end of its k
        # sweep) along the next key up, which the interpolator then brackets in.
        for along in reversed(schema.sizes):
            same = np.ones(len(frame), dtype=bool)
            for c in schema.exact + schema.sizes:
                if c != along:
                    same &= (frame[c] == point[c]).to_numpy()
            sweep = frame[same].sort_values(along)
            pos = int(np.flatnonzero(sweep.index == idx)[0])
            if 0 < pos < len(sweep) - 1:
                break
        size = along
        others = [c for c in schema.exact + schema.sizes
                  if c != size and frame[c].nunique() > 1]
        near = sweep.iloc[max(0, pos - 2):pos + 3]
        cells = []
        for j, r in near.iterrows():
            cell = f"{r[size]:g}:{r['measured_s'] * 1e6:.4g}"
            if j == idx:
                cell = f"[{cell} → {r['predicted_s'] * 1e6:.4g}]"
            cells.append(cell)
        where = ", ".join(f"{c}={point[c]:g}" if not isinstance(point[c], str)
                          else f"{c}={point[c]}" for c in others)
        lines.append(f"  {rel[idx]:.0%}  {where}  {size}: " + "  ".join(cells))
    return lines


def _jsonable(keys: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in keys.items()}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


if __name__ == "__main__":
    main()
