"""`macssim serve` against a published serving measurement of an MoE model.

Published figures (constants below), read from
https://github.com/tenstorrent/tt-inference-server/issues/340 ("Qwen3 Family: GPU
Benchmarks", comment by gtobarTT, 2025-07-18, "Performance Benchmark Sweeps for
Qwen3-30B-A3B on A100"): Qwen/Qwen3-30B-A3B served by vLLM on an A100 (the GPU reference
runs of Tenstorrent's inference server; the issue's table gives ISL, OSL, concurrency,
number of requests, mean TTFT and mean TPOT). Every row is concurrency 1: one request at a
time, fixed input and output lengths (vLLM's random dataset), i.e. a static batch of one.
What the table does not state: the A100 variant, the number of GPUs, the vLLM version, its
flags (CUDA graphs, chunked prefill, max_num_batched_tokens). We assume one A100-SXM4-80GB
(benchmarks/data/1xA100.yaml; the 61 GB of BF16 weights need an 80 GB part on one GPU).

No equally specified H100 measurement of Qwen3-30B-A3B (or another model macssim has a
preset for) was found; docs/serve.md ("Against a published serving measurement") says so.

macssim side: the text tower of the `qwen3-vl-30b-a3b` preset has Qwen3-30B-A3B's shape
(48 layers, 128 experts, top-8, hidden 2048). For each row a synthetic text-only trace of
one request with exactly ISL prompt tokens and OSL-1 recorded decode rows is written
(`macssim synth`), the request arrives at t = 0 (`--arrivals`), and `serve` runs it with
OSL output tokens under the vanilla policy (no token dropped, as vLLM). Costs: the
roofline (no measured tables exist for A100).

    .venv/bin/python benchmarks/serve_vs_published.py            # all 7 rows, ~1-2 min
    .venv/bin/python benchmarks/serve_vs_published.py --rows 3   # the first 3 rows

Error = (simulated - published) / published.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TOPOLOGY = REPO / "benchmarks" / "data" / "1xA100.yaml"
MACSSIM = [str(Path(sys.executable).with_name("macssim"))]

SOURCE_URL = "https://github.com/tenstorrent/tt-inference-server/issues/340"
# (ISL, OSL, concurrency, requests, mean TTFT ms, mean TPOT ms), Qwen3-30B-A3B on A100, vLLM,
# copied from the table in SOURCE_URL (comment of 2025-07-18).
PUBLISHED = [
    (128, 128, 1, 8, 35.7, 9.6),
    (128, 1024, 1, 4, 27.0, 9.7),
    (1024, 128, 1, 4, 70.3, 9.8),
    (2048, 128, 1, 4, 81.0, 9.9),
    (3072, 128, 1, 4, 90.2, 10.1),
    (4096, 128, 1, 2, 75.2, 10.3),
    (8192, 128, 1, 2, 227.0, 10.6),
]

SCENARIO = """\
name: static-text-{isl}
description: Text-only requests of exactly {isl} prompt tokens (serve_vs_published.py).
batch_size: 1
decode_steps: {decode}
requests:
  - kind: text
    weight: 1.0
    image_tokens: [0, 0]
    video_tokens: [0, 0]
    text_tokens: [{isl}, {isl}]
sources:
  - "fixed lengths of {url}"
"""


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")


def simulate(isl: int, osl: int, topology: str, policy: str, costs: str,
             tables: Path | None, work: Path) -> tuple[float, float, str]:
    """One request of `isl` prompt tokens arriving at t = 0, `osl` output tokens.
    Returns (TTFT ms, TPOT ms, cost backend)."""
    from macssim.serve import ServeConfig, serve

    scenario = work / f"static-{isl}.yaml"
    scenario.write_text(SCENARIO.format(isl=isl, decode=osl - 1, url=SOURCE_URL))
    trace = work / f"static-{isl}-{osl}.mtrace"
    _run(MACSSIM + ["synth", "--model", "qwen3-vl-30b-a3b", "--scenario", str(scenario),
                    "--batch-size", "1", "--decode-steps", str(osl - 1), "--steps", str(osl),
                    "--seed", "0", "--out", str(trace), "--force"])
    arrivals = work / "arrivals.csv"
    arrivals.write_text("arrival_s,trace_index\n0.0,0\n")
    result = serve(ServeConfig(trace=trace, topology=topology, policy=policy,
                               arrivals=arrivals, output_tokens=osl, costs=costs,
                               tables=tables))
    req = result.requests.iloc[0]
    assert int(req["prompt_tokens"]) == isl, (req["prompt_tokens"], isl)
    assert int(req["output_tokens"]) == osl, (req["output_tokens"], osl)
    backend = result.replay.get("costs", {}).get("backend", "?")
    return float(req["ttft_s"]) * 1e3, float(req["tpot_s"]) * 1e3, backend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default=str(DEFAULT_TOPOLOGY))
    ap.add_argument("--policy", default="vanilla")
    ap.add_argument("--costs", default="auto", choices=["auto", "measured", "roofline"])
    ap.add_argument("--tables", type=Path, default=None)
    ap.add_argument("--rows", type=int, default=len(PUBLISHED),
                    help="compare the first N rows of the published table")
    args = ap.parse_args()

    print(f"published: Qwen3-30B-A3B, vLLM, A100, concurrency 1 ({SOURCE_URL})")
    print(f"simulated: qwen3-vl-30b-a3b text tower on {Path(args.topology).name}, "
          f"policy {args.policy}, one request at t = 0\n")
    head = (f"{'ISL':>5} {'OSL':>5} | {'TTFT pub':>8} {'TTFT sim':>8} {'err':>7} | "
            f"{'TPOT pub':>8} {'TPOT sim':>8} {'err':>7} | costs")
    print(head)
    print("-" * len(head))
    errs_ttft, errs_tpot = [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serve-vs-published-") as tmp:
        for isl, osl, _conc, _n, ttft_pub, tpot_pub in PUBLISHED[:args.rows]:
            ttft, tpot, backend = simulate(isl, osl, args.topology, args.policy, args.costs,
                                           args.tables, Path(tmp))
            e1, e2 = (ttft - ttft_pub) / ttft_pub, (tpot - tpot_pub) / tpot_pub
            errs_ttft.append(e1)
            errs_tpot.append(e2)
            print(f"{isl:>5} {osl:>5} | {ttft_pub:>8.1f} {ttft:>8.1f} {e1:>+7.1%} | "
                  f"{tpot_pub:>8.1f} {tpot:>8.2f} {e2:>+7.1%} | {backend}", flush=True)
    n = len(errs_ttft)
    print(f"\nmean |error| over {n} rows: TTFT {sum(map(abs, errs_ttft)) / n:.1%}, "
          f"TPOT {sum(map(abs, errs_tpot)) / n:.1%}  (ms; {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
