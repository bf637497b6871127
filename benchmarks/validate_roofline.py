"""macssim's own cost functions beside NVIDIA's measured H100 tables, per operation.

Reads the aiconfigurator-core 0.12.0 tables for H100 SXM converted to macssim's format
(``gemm.csv``, ``moe.csv``, ``nccl.csv``, ``deepep.csv`` in ``--tables DIR``; made by
``macssim cost convert --out DIR`` after ``pip install -e ".[aiconfigurator]"``) and, on the
``8xH100`` preset, compares each measured point with what macssim computes for it:

1. GEMM (TRT-LLM 1.3.0rc20, ``torch_flow``): ``gemm_s(gpu, m, n, k, dtype)`` (fixed
   kernel cost plus roofline; FP8 with its activation quantisation: ``fp8_block`` rows with
   block scaling, macssim's FP8, ``fp8`` rows with per-tensor scaling). Grid: every
   measured m ≤ 16384, n and k in MODEL_SIZES.
2. Fused MoE (TRT-LLM ``moe_torch_flow_cutlass``, SwiGLU, ``balanced``, TP 1, EP 8, BF16 and
   FP8): ``expert_phase_s`` of one rank. ``tokens`` is the batch entering the layer across
   the EP group (aiconfigurator's convention); the T·k assignments are split as evenly as
   possible over the 8 ranks, then over each rank's E/8 experts (``rank_rows``: what the
   measured curves show), and the slowest rank is taken. The
   power-law rows are skipped: the table does not carry the per-expert counts it drew.
3. NCCL all-to-all, 8 ranks (NCCL 2.27.3, half and int8 as separate cases): the ``nccl``
   engine on the flow network for a uniform all-to-all of ``bytes_per_rank``
   (``macssim.cost._published._uniform_done_s``: every rank sends bytes_per_rank / 8 to
   each other rank, per-pair size efficiency ``nccl_size_efficiency``, 10 µs link latency,
   370 GB/s NVLink capacity, slowest rank).
4. DeepEP EP8 (SGLang 0.5.12): ``deepep-normal`` against the normal kernels at 24 SMs (the
   engine's SM budget is calibrated at 20–24 SMs) and ``deepep-ll`` against the low-latency
   kernels, every rank joining at t = 0, a rank done when it has sent and received, the
   slowest rank. Routing: DeepEP's test routing (uniform random top-k) in expectation, i.e.
   every rank sends each other rank T·(1 − C(E − E/8, k)/C(E, k)) token copies (normal) or
   T·k/8 (token, expert) copies (low latency). Dispatch in FP8 (h + 4·⌈h/128⌉ bytes per
   copy; docs/validation.md: FP8 is what fits these rows), combine in BF16 (2h).

Relative error = predicted / measured − 1. Prints one markdown table per operation family
and a summary table.

    python benchmarks/validate_roofline.py --tables /tmp/tables
"""

from __future__ import annotations

import argparse
import sys
import time
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd

from macssim.cost import TokenCounts, collective_s, load_table
from macssim.cost._precision import Precision, fp8_row_bytes
from macssim.cost._published import _uniform_done_s
from macssim.cost._roofline import GROUPED_GEMM, expert_phase_s, gemm_s
from macssim.hardware import AllToAllSpec, load_topology
from macssim.trace import ModelFacts

TABLES = ("gemm", "moe", "nccl", "deepep")
MODEL_SIZES = (768, 1536, 2048, 3072, 4096, 6144, 7168, 8192, 12288, 16384)
M_BUCKETS = ((1, 16), (17, 128), (129, 1024), (1025, 16384))
EP = 8


def stats(err: np.ndarray) -> dict[str, float]:
    a = np.abs(err)
    return {"cases": int(err.size), "median": float(np.median(a)), "max": float(a.max()),
            "bias": float(np.median(err)), "w25": float((a <= 0.25).mean()),
            "w10": float((a <= 0.10).mean())}


def row(label: str, s: dict[str, float]) -> str:
    return (f"| {label} | {s['cases']} | {s['median']:.0%} | {s['max']:.0%} | "
            f"{s['bias']:+.0%} | {s['w25']:.0%} | {s['w10']:.0%} |")


HEADER = ("| case | cases | median \\|error\\| | max \\|error\\| | median signed | "
          "within 25 % | within 10 % |\n|---|---:|---:|---:|---:|---:|---:|")


def frame(tables: Path, op: str) -> pd.DataFrame:
    df = load_table(tables / f"{op}.csv").frame
    keys = [c for c in df.columns if c not in ("latency_s", "source")]
    return df.groupby(keys, as_index=False).latency_s.median()  # repeats -> median


# ---------------------------------------------------------------------------------- GEMM
def gemm(tables: Path, gpu) -> list[tuple[str, np.ndarray]]:
    df = frame(tables, "gemm")
    df = df[(df.m <= 16384) & df.n.isin(MODEL_SIZES) & df.k.isin(MODEL_SIZES)]
    out = []
    for dtype, label in (("bfloat16", "bf16"), ("fp8", "fp8"), ("fp8_block", "fp8")):
        d = df[df.dtype == dtype]
        if d.empty:
            continue
        m = d.m.to_numpy(np.float64)
        scaling = "tensor" if dtype == "fp8" else "block"
        pred = np.empty(m.size)
        for (n, k), idx in d.groupby(["n", "k"]).indices.items():
            pred[idx] = gemm_s(gpu, m[idx], int(n), int(k), label, fp8_scaling=scaling)
        err = pred / d.latency_s.to_numpy() - 1
        for lo, hi in M_BUCKETS:
            sel = (m >= lo) & (m <= hi)
            out.append((f"GEMM {dtype}, m {lo}–{hi}", err[sel]))
        out.append((f"GEMM {dtype}, all m ≤ 16384", err))
    return out


# ------------------------------------------------------------------------------ fused MoE
def rank_rows(tokens: int, topk: int, experts: int) -> np.ndarray:
    """[EP, E/EP] rows per expert slot, balanced across ranks first: the T·k assignments
    split as evenly as possible over the EP ranks, then over each rank's E/EP experts (one
    row per expert before any expert gets a second). This is what the measured curves show:
    at EP8 with k = 8 the time grows in proportion to tokens up to T·k/8 = E/8 (one more
    expert's weights read per token), then stays flat."""
    per_rank = np.full(EP, (tokens * topk) // EP, dtype=np.int64)
    per_rank[: (tokens * topk) % EP] += 1
    slots = experts // EP
    rows = np.repeat(per_rank[:, None] // slots, slots, axis=1)
    rows += np.arange(slots)[None, :] < (per_rank % slots)[:, None]
    return rows


def moe(tables: Path, gpu) -> list[tuple[str, np.ndarray]]:
    df = frame(tables, "moe")
    df = df[(df.kernel == "moe_torch_flow_cutlass") & (df.distribution == "balanced")
            & (df.tp == 1) & (df.ep == EP) & df.dtype.isin(["bfloat16", "fp8", "fp8_block"])]
    out, per_shape = [], []
    for dtype in ("bfloat16", "fp8", "fp8_block"):
        errs, rpe, odd = [], [], []
        for (h, inter, e, k), g in df[df.dtype == dtype].groupby(
                ["hidden", "inter", "experts", "topk"]):
            model = ModelFacts(name="table", num_layers=1, moe_layers=(0,), num_experts=int(e),
                               top_k=int(k), hidden_size=int(h),
                               expert_intermediate_size=int(inter))
            prec = Precision() if dtype == "bfloat16" else Precision(experts="fp8")
            tokens = g.tokens.to_numpy().astype(np.int64)
            pred = np.array([expert_phase_s(model, gpu, rank_rows(int(t), int(k), int(e)),
                                            GROUPED_GEMM, prec).max() for t in tokens])
            err = pred / g.latency_s.to_numpy() - 1
            errs.append(err)
            rpe.append(tokens * k / e)  # rows per expert
            odd.append(np.full(err.size, e == 16))
            if dtype == "bfloat16":
                per_shape.append((f"MoE bfloat16 h{h} I{inter} E{e} top-{k}", err))
        if not errs:
            continue
        err, r, bad = np.concatenate(errs), np.concatenate(rpe), np.concatenate(odd)
        out += [(f"MoE {dtype}, all shapes (TP1 EP8)", err),
                (f"MoE {dtype}, without E16 top-1", err[~bad]),
                (f"MoE {dtype}, < 1 row per expert (w/o E16)", err[~bad & (r < 1)]),
                (f"MoE {dtype}, 1–64 rows per expert (w/o E16)",
                 err[~bad & (r >= 1) & (r <= 64)]),
                (f"MoE {dtype}, > 64 rows per expert (w/o E16)", err[~bad & (r > 64)])]
    return out + per_shape


# ---------------------------------------------------------------------------------- NCCL
def nccl(tables: Path, topo) -> list[tuple[str, np.ndarray]]:
    df = frame(tables, "nccl")
    df = df[(df.collective == "alltoall") & (df.ranks == EP)]
    pred = {s: _uniform_done_s(topo, float(s), "nccl") for s in df.bytes_per_rank.unique()}
    size = df.bytes_per_rank.to_numpy()
    err = np.array([pred[s] for s in size]) / df.latency_s.to_numpy() - 1
    return [("NCCL all-to-all 8 ranks, all sizes (half + int8)", err),
            ("NCCL all-to-all, < 64 KiB/rank", err[size < 1 << 16]),
            ("NCCL all-to-all, 64 KiB – 1 MiB/rank", err[(size >= 1 << 16) & (size < 1 << 20)]),
            ("NCCL all-to-all, ≥ 1 MiB/rank", err[size >= 1 << 20])]


# -------------------------------------------------------------------------------- DeepEP
def expected_counts(tokens: int, topk: int, experts: int) -> TokenCounts:
    per_gpu = experts // EP
    hit = 1.0 - comb(experts - per_gpu, topk) / comb(experts, topk)  # P(token needs rank d)
    pair = np.full((EP, EP), tokens * hit)
    assign = np.full((EP, EP), tokens * topk / EP)
    return TokenCounts(pair_tokens=pair, assignment_pairs=assign,
                       node_tokens=np.zeros((EP, 1)))


def deepep(tables: Path, topo) -> list[tuple[str, np.ndarray]]:
    df = frame(tables, "deepep")
    df = df[(df.ep == EP) & (((df["mode"] == "normal") & (df.sms == 24))
                            | (df["mode"] == "low_latency"))]
    out = []
    for mode, engine in (("normal", "deepep-normal"), ("low_latency", "deepep-ll")):
        for phase in ("dispatch", "combine"):
            g = df[(df["mode"] == mode) & (df.phase == phase)]
            pred = []
            for r in g.itertuples():
                tb = fp8_row_bytes(int(r.hidden)) if phase == "dispatch" else 2 * int(r.hidden)
                counts = expected_counts(int(r.tokens), int(r.topk), int(r.experts))
                pred.append(float(collective_s(topo, counts, tb, phase,
                                               AllToAllSpec(engine), receivers_wait=True).max()))
            err = np.array(pred) / g.latency_s.to_numpy() - 1
            tok = g.tokens.to_numpy()
            out += [(f"DeepEP {mode} {phase} ({engine}), all", err),
                    (f"DeepEP {mode} {phase}, tokens/rank < 512", err[tok < 512]),
                    (f"DeepEP {mode} {phase}, tokens/rank ≥ 512", err[tok >= 512])]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tables", required=True, type=Path,
                    help="directory holding gemm.csv, moe.csv, nccl.csv, deepep.csv")
    args = ap.parse_args()
    missing = [f"{op}.csv" for op in TABLES if not (args.tables / f"{op}.csv").is_file()]
    if not args.tables.is_dir() or missing:
        what = ("does not exist" if not args.tables.is_dir()
                else f"lacks {', '.join(missing)}")
        print(f"validate_roofline: tables directory {args.tables} {what}; make it with "
              f'`pip install -e ".[aiconfigurator]"` then `macssim cost convert --out '
              f"{args.tables}` (docs/cost-tables.md)", file=sys.stderr)
        return 2
    topo = load_topology("8xH100")
    sections = (("GEMM", lambda: gemm(args.tables, topo.gpu)),
                ("Fused MoE", lambda: moe(args.tables, topo.gpu)),
                ("NCCL", lambda: nccl(args.tables, topo)),
                ("DeepEP", lambda: deepep(args.tables, topo)))
    for name, fn in sections:
        t0 = time.perf_counter()
        results = fn()
        print(f"\n### {name} ({time.perf_counter() - t0:.1f} s)\n\n{HEADER}")
        for label, err in results:
            if err.size:
                print(row(label, stats(err)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
