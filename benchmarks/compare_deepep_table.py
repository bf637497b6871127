"""The all-to-all engines beside NVIDIA's measured DeepEP table for H100 (EP8).

Reads aiconfigurator-core's DeepEP table for H100 SXM converted to macssim's format
(``/tmp/tables/deepep.csv`` by default: SGLang 0.5.12, hidden 7168, top-8, 256 experts,
EP8; columns op,system,framework,version,kernel,dtype,mode,phase,hidden,topk,experts,ep,sms,
tokens,latency_s) and prints, per row, the measured time and what the 8xH100 preset
predicts with each engine: DeepEP's test routing (random scores, top-8 of 256), every rank
joining at t = 0, a rank done when it has sent and received (the kernel returns then), the
slowest rank's time. Dispatch is shown in FP8 (1 byte per element + fp32 scale per 128)
and BF16, since the table does not say which it ran; combine is BF16.

    python benchmarks/compare_deepep_table.py [--table PATH]
"""

from __future__ import annotations

import argparse

import pandas as pd

from macssim.cost import benchmark_routing, collective_s
from macssim.hardware import AllToAllSpec, load_topology

HIDDEN = 7168
FP8 = HIDDEN + HIDDEN // 128 * 4
BF16 = 2 * HIDDEN


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="/tmp/tables/deepep.csv")
    args = ap.parse_args()
    df = pd.read_csv(args.table)
    df = df[(df.hidden == HIDDEN) & (df.topk == 8) & (df.experts == 256) & (df.ep == 8)
            & (df.tokens.isin([128, 1024, 4096])) & ((df["mode"] == "low_latency")
                                                    | (df.sms == 24))]
    topo = load_topology("8xH100")
    print("| mode | phase | tokens/rank | measured µs | engine | predicted µs (FP8 dispatch) | "
          "error | predicted µs (BF16) | error |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    for row in df.sort_values(["mode", "phase", "tokens"]).itertuples():
        counts = benchmark_routing(topo, 0, tokens_per_rank=int(row.tokens))
        engine = "deepep-ll" if row.mode == "low_latency" else "deepep-normal"
        for eng in ("ideal", engine):
            out = []
            for token_bytes in ((FP8, BF16) if row.phase == "dispatch" else (BF16, BF16)):
                t = float(collective_s(topo, counts, token_bytes, row.phase,
                                       AllToAllSpec(eng), receivers_wait=True).max())
                out.append(t)
            meas = row.latency_s
            print(f"| {row.mode} | {row.phase} | {row.tokens} | {meas * 1e6:.1f} | {eng} | "
                  f"{out[0] * 1e6:.1f} | {out[0] / meas - 1:+.0%} | {out[1] * 1e6:.1f} | "
                  f"{out[1] / meas - 1:+.0%} |")


if __name__ == "__main__":
    main()
