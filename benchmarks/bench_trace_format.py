"""Trace format v1 against v2: bytes per token-layer and read speed, in one run (numbers
go to docs/trace-format.md, "Size and speed").

    python benchmarks/bench_trace_format.py                  # every bundled scenario
    python benchmarks/bench_trace_format.py --scenarios chartqa mixed --batches 1

For each scenario, the same synthetic steps (``synthetic_steps``, one batch: a prefill and
its decode steps, seed 0, Qwen3-VL-30B-A3B) are written four ways: v1 as macssim wrote it
until now (uncompressed), v1 with zlib (``--compress``), v2 as written by default (top-2k
scores, zstd) and v2 keeping every score (``top_n=None``). Bytes per token-layer = file
size / (tokens x MoE layers). Read speed = token-layers per second of iterating every step
(``for step in open_trace(path)``: read, CRC, inflate, decode, check, densify) of v1 and
v2 read in turn, ``--repeats`` rounds over files the page cache already holds: the best
speed of each, and the median over rounds of the per-round ratio (robust to a shared
machine's load changing between rounds).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

MODEL = "qwen3-vl-30b-a3b"

READ = ("v1", "v2")
"""Variants whose read speed is measured (all four are sized)."""
VARIANTS = (
    ("v1", {"format_version": 1}),
    ("v1 zlib", {"format_version": 1, "compress": True}),
    ("v2", {}),
    ("v2 all scores", {"top_n": None}),
)


def _read_once(path: str) -> tuple[float, int]:
    from macssim.trace import open_trace

    start = time.perf_counter()
    tokens = sum(step.num_tokens for step in open_trace(path))
    return time.perf_counter() - start, tokens


def bench(scenario: str, batches: int, repeats: int) -> list[tuple[str, float, float]]:
    from macssim.trace import get_model_preset, get_scenario, synthetic_steps, write_trace

    model = get_model_preset(MODEL)
    spec = get_scenario(scenario)
    num_steps = batches * (1 + spec.decode_steps)
    steps = list(synthetic_steps(MODEL, spec, num_steps, seed=0))
    tokens = sum(s.num_tokens for s in steps)
    token_layers = tokens * model.num_moe_layers
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, kwargs in VARIANTS:
            path = os.path.join(tmp, name.replace(" ", "_") + ".mtrace")
            start = time.perf_counter()
            write_trace(path, model, {"source": "bench"}, steps, **kwargs)
            write_s = time.perf_counter() - start
            paths[name] = (path, write_s)
        # Reads interleave v1 and v2 round by round, so that both see the same load on a
        # shared machine; the ratio is the median over rounds of v1 time / v2 time.
        timed = [name for name, _ in VARIANTS if name in READ]
        best = {name: float("inf") for name in timed}
        ratios: dict[str, list[float]] = {name: [] for name in timed}
        for _ in range(repeats):
            seconds = {}
            for name in timed:
                seconds[name], got = _read_once(paths[name][0])
                assert got == tokens
                best[name] = min(best[name], seconds[name])
            for name in timed:
                ratios[name].append(seconds["v1"] / seconds[name])
        base = os.path.getsize(paths["v1"][0])
        print(f"\n{scenario}: {num_steps} steps, {tokens:,} tokens, "
              f"{token_layers:,} token-layers")
        print(f"  {'format':14s} {'B/token-layer':>13s} {'of v1':>7s} {'read Mtl/s':>11s} "
              f"{'read vs v1':>10s} {'write s':>8s}")
        for name, _ in VARIANTS:
            path, write_s = paths[name]
            size = os.path.getsize(path)
            if name in timed:
                speed = token_layers / best[name] / 1e6
                ratio = float(np.median(ratios[name]))
                read = f"{speed:11.2f} {ratio:9.2f}x"
            else:
                speed, read = float("nan"), f"{'-':>11s} {'-':>10s}"
            print(f"  {name:14s} {size / token_layers:13.1f} {size / base:7.3f} {read} "
                  f"{write_s:8.1f}")
            rows.append((name, size / token_layers, speed))
    return rows


def main() -> None:
    from macssim.trace import list_scenarios

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="*", default=None,
                        help="scenario names (default: every bundled one)")
    parser.add_argument("--batches", type=int, default=1, help="batches per scenario")
    parser.add_argument("--repeats", type=int, default=7, help="read rounds")
    args = parser.parse_args()
    names = args.scenarios or list(list_scenarios())
    for name in names:
        bench(name, args.batches, args.repeats)


if __name__ == "__main__":
    main()
