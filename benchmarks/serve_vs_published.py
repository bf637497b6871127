"""`macssim serve` against published serving measurements of an MoE model.

Two published runs of Qwen/Qwen3-30B-A3B served by vLLM, each with fixed input and output
lengths (vLLM's random dataset), a stated concurrency, mean TTFT and mean TPOT:

- ``--source a100``: tenstorrent/tt-inference-server issue 340 ("Qwen3 Family: GPU
  Benchmarks", comment by gtobarTT, 2025-07-18, "Performance Benchmark Sweeps for
  Qwen3-30B-A3B on A100"): seven rows, every one at concurrency 1 (one request at a time,
  i.e. a static batch of one). Not stated: the A100 variant, the number of GPUs, the vLLM
  version and flags. We assume one A100-SXM4-80GB (benchmarks/data/1xA100.yaml; the 61 GB
  of BF16 weights need an 80 GB part on one GPU). Costs: the roofline (no measured tables
  exist for A100). Token budget 2,048: vLLM's default for `vllm serve` on an A100 (its
  V1 engine keeps the 8,192 of large GPUs off A100), so prompts over 2,048 tokens are
  prefilled in chunks.
- ``--source h100``: vllm-project/vllm PR #23151 ("Add tuned fused_moe configs for
  Qwen3-30B-A3B", wenchen76, 2025-08-19), the run "WO tuned configs (TP=1, EP=1, on H100)":
  BF16, `VLLM_USE_DEEP_GEMM=1 vllm serve` with default flags, `benchmark_serving.py
  --dataset-name random --random-input 2048 --random-output 1024 --max-concurrency 10
  --num-prompt 100`. Not stated: the vLLM version, SXM or PCIe, 80 or 94 GB. We assume one
  H100-SXM5-80GB (benchmarks/data/1xH100.yaml), whose per-operation costs come from the
  measured H100 SXM tables (aiconfigurator-core; `pip install -e ".[aiconfigurator]"`).
  Ten identical requests kept in flight behave as ten consecutive static batches of ten
  (they start and end together), so the run is simulated as one static batch of ten at
  t = 0, with vLLM's default token budget for `vllm serve` on an 80 GB GPU (8,192 tokens
  per step, chunked prefill), which is also macssim's default. Without `--ignore-eos` the
  published requests averaged 1,016 output tokens, not 1,024.

macssim side: the text tower of the `qwen3-vl-30b-a3b` preset has Qwen3-30B-A3B's shape
(48 layers, 128 experts, top-8, hidden 2048). For each row a synthetic text-only trace of
`concurrency` requests with exactly ISL prompt tokens and OSL-1 recorded decode rows is
written (`macssim synth`), the requests arrive at t = 0 (`--arrivals`), and `serve` runs
them with OSL output tokens under the vanilla policy (no token dropped, as vLLM). TTFT and
TPOT are means over the requests.

    .venv/bin/python benchmarks/serve_vs_published.py                 # A100, all 7 rows, ~1-2 min
    .venv/bin/python benchmarks/serve_vs_published.py --rows 3        # the first 3 rows
    .venv/bin/python benchmarks/serve_vs_published.py --source h100   # H100, measured tables

Error = (simulated - published) / published.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MACSSIM = [str(Path(sys.executable).with_name("macssim"))]


@dataclass(frozen=True)
class Published:
    """One published table: where it is from, what it ran on, its rows of (ISL, OSL,
    concurrency, requests, mean TTFT ms, mean TPOT ms)."""

    label: str
    url: str
    topology: Path
    costs: str
    token_budget: int
    """vLLM's default ``max_num_batched_tokens`` for ``vllm serve`` on that GPU (V1
    engine/arg_utils: 8192 on GPUs of >= 70 GiB except A100, 2048 otherwise)."""
    rows: tuple[tuple[int, int, int, int, float, float], ...]


SOURCES = {
    "a100": Published(
        label="Qwen3-30B-A3B, vLLM, A100, concurrency 1",
        url="https://github.com/tenstorrent/tt-inference-server/issues/340",
        topology=REPO / "benchmarks" / "data" / "1xA100.yaml", costs="roofline",
        token_budget=2048,
        # copied from the table in the issue (comment of 2025-07-18)
        rows=((128, 128, 1, 8, 35.7, 9.6),
              (128, 1024, 1, 4, 27.0, 9.7),
              (1024, 128, 1, 4, 70.3, 9.8),
              (2048, 128, 1, 4, 81.0, 9.9),
              (3072, 128, 1, 4, 90.2, 10.1),
              (4096, 128, 1, 2, 75.2, 10.3),
              (8192, 128, 1, 2, 227.0, 10.6))),
    "h100": Published(
        label="Qwen3-30B-A3B BF16, vLLM, 1x H100 (TP=1, EP=1), concurrency 10, 100 prompts",
        url="https://github.com/vllm-project/vllm/pull/23151",
        topology=REPO / "benchmarks" / "data" / "1xH100.yaml", costs="measured",
        token_budget=8192,
        # "WO tuned configs": Mean TTFT 267.22 ms, Mean TPOT 13.18 ms (PR description)
        rows=((2048, 1024, 10, 100, 267.22, 13.18),)),
}

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


def simulate(isl: int, osl: int, concurrency: int, source: Published, topology: str,
             policy: str, costs: str, tables: Path | None, token_budget: int, work: Path
             ) -> tuple[float, float, str]:
    """`concurrency` requests of `isl` prompt tokens arriving at t = 0, `osl` output tokens
    each. Returns (mean TTFT ms, mean TPOT ms, cost backend)."""
    from macssim.serve import SchedulerConfig, ServeConfig, serve

    scenario = work / f"static-{isl}.yaml"
    scenario.write_text(SCENARIO.format(isl=isl, decode=osl - 1, url=source.url))
    trace = work / f"static-{isl}-{osl}-{concurrency}.mtrace"
    _run(MACSSIM + ["synth", "--model", "qwen3-vl-30b-a3b", "--scenario", str(scenario),
                    "--batch-size", str(concurrency), "--decode-steps", str(osl - 1),
                    "--steps", str(osl), "--seed", "0", "--out", str(trace), "--force"])
    arrivals = work / "arrivals.csv"
    arrivals.write_text("arrival_s,trace_index\n"
                        + "".join(f"0.0,{i}\n" for i in range(concurrency)))
    result = serve(ServeConfig(trace=trace, topology=topology, policy=policy,
                               arrivals=arrivals, output_tokens=osl, costs=costs,
                               tables=tables,
                               scheduler=SchedulerConfig(token_budget=token_budget)))
    reqs = result.requests
    assert len(reqs) == concurrency and (reqs["prompt_tokens"] == isl).all(), reqs
    assert (reqs["output_tokens"] == osl).all(), reqs["output_tokens"]
    backend = result.replay.get("costs", {}).get("backend", "?")
    return float(reqs["ttft_s"].mean()) * 1e3, float(reqs["tpot_s"].mean()) * 1e3, backend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="a100", choices=sorted(SOURCES),
                    help="which published table (see the module docstring)")
    ap.add_argument("--topology", default=None,
                    help="topology YAML (default: the source's, benchmarks/data/)")
    ap.add_argument("--policy", default="vanilla")
    ap.add_argument("--costs", default=None, choices=["auto", "measured", "roofline"],
                    help="default: the source's (measured tables for H100, roofline for A100)")
    ap.add_argument("--tables", type=Path, default=None)
    ap.add_argument("--token-budget", type=int, default=None,
                    help="tokens per step (default: vLLM's default on the source's GPU)")
    ap.add_argument("--rows", type=int, default=None,
                    help="compare the first N rows of the published table")
    args = ap.parse_args()
    source = SOURCES[args.source]
    topology = args.topology or str(source.topology)
    costs = args.costs or source.costs
    budget = args.token_budget or source.token_budget
    rows = source.rows[:args.rows] if args.rows else source.rows

    print(f"published: {source.label} ({source.url})")
    print(f"simulated: qwen3-vl-30b-a3b text tower on {Path(topology).name}, "
          f"policy {args.policy}, costs {costs}, token budget {budget}, the requests of a "
          "row all at t = 0\n")
    head = (f"{'ISL':>5} {'OSL':>5} {'conc':>4} | {'TTFT pub':>8} {'TTFT sim':>8} {'err':>7} | "
            f"{'TPOT pub':>8} {'TPOT sim':>8} {'err':>7} | costs")
    print(head)
    print("-" * len(head))
    errs_ttft, errs_tpot = [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serve-vs-published-") as tmp:
        for isl, osl, conc, _n, ttft_pub, tpot_pub in rows:
            ttft, tpot, backend = simulate(isl, osl, conc, source, topology, args.policy,
                                           costs, args.tables, budget, Path(tmp))
            e1, e2 = (ttft - ttft_pub) / ttft_pub, (tpot - tpot_pub) / tpot_pub
            errs_ttft.append(e1)
            errs_tpot.append(e2)
            print(f"{isl:>5} {osl:>5} {conc:>4} | {ttft_pub:>8.1f} {ttft:>8.1f} {e1:>+7.1%} | "
                  f"{tpot_pub:>8.2f} {tpot:>8.2f} {e2:>+7.1%} | {backend}", flush=True)
    n = len(errs_ttft)
    print(f"\nmean |error| over {n} rows: TTFT {sum(map(abs, errs_ttft)) / n:.1%}, "
          f"TPOT {sum(map(abs, errs_tpot)) / n:.1%}  (ms; {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
