"""``macssim serve``: requests arriving at a rate (or from a file), batched by a
vLLM/SGLang-style scheduler, each step simulated on the cluster; TTFT, TPOT, goodput."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from macssim._resources import DEFAULT_TRACE
from macssim._validate import Limits
from macssim.cli._output import echo_table, library_errors
from macssim.cli._types import FiniteFloat

__all__ = ["command"]


@click.command("serve")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Trace whose requests' routing is replayed (default: the "
              "bundled trace, 16 chart, document and chat requests).")
@click.option("--topology", default="8xH100", show_default=True,
              help="Preset name or topology YAML; one data-parallel attention rank per GPU.")
@click.option("--policy", default="token-drop", show_default=True,
              type=click.Choice(["vanilla", "token-drop", "expanded-drop", "macs"]),
              help="The capacity policy every step runs under.")
@click.option("--capacity-factor", "gamma",
              type=FiniteFloat(0.0, Limits.MAX_CAPACITY_FACTOR, low_open=True), default=1.0,
              show_default=True, help="γ of the policy's capacity.")
@click.option("--rate", type=FiniteFloat(0.0, 1e6, low_open=True), default=10.0,
              show_default=True, help="Poisson arrival rate, requests per second (> 0).")
@click.option("--requests", "num_requests", type=click.IntRange(1, 1 << 20), default=32,
              show_default=True, help="Requests a Poisson run serves.")
@click.option("--arrivals", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV of arrivals instead of --rate: header arrival_s,request_id (the "
              "trace's ids) or arrival_s,trace_index; docs/serve.md.")
@click.option("--output-tokens", type=click.IntRange(1, 1 << 24), default=None,
              help="Output tokens per request (default: 1 + the decode steps the trace "
              "recorded for it; more cycles the recorded decode routing).")
@click.option("--token-budget", type=click.IntRange(1, 1 << 20), default=8192,
              show_default=True, help="Tokens per rank per step (vLLM max_num_batched_tokens).")
@click.option("--max-seqs", type=click.IntRange(1, 1 << 20), default=256, show_default=True,
              help="Requests running at once per rank (vLLM max_num_seqs).")
@click.option("--placement", type=click.Choice(["contiguous", "eplb"]), default="contiguous",
              show_default=True, help="Expert placement, as for `macssim replay` (eplb: "
              "planned per layer on the trace's loads).")
@click.option("--redundant-experts", type=click.IntRange(0, 1 << 16), default=0,
              show_default=True, help="EPLB's extra expert slots (with --placement eplb).")
@click.option("--attention-tp", type=click.IntRange(1, 1 << 16), default=1, show_default=True,
              help="Tensor-parallel attention over groups of this many GPUs (1: one data-"
              "parallel rank per GPU); the scheduler then has GPUs / N ranks.")
@click.option("--kv-cache-tokens", type=click.IntRange(1, 1 << 40), default=None,
              help="Tokens of KV cache per rank (default: unbounded). A request is admitted "
              "only when its prompt and output tokens fit beside the running ones "
              "(docs/serve.md shows how to size it from GPU memory).")
@click.option("--no-chunked-prefill", is_flag=True,
              help="Admit a prompt only when it fits the step's budget whole.")
@click.option("--sla-ttft", type=FiniteFloat(0.0, 1e6, low_open=True), default=2.0,
              show_default=True, help="SLA: time to first token at most this (s).")
@click.option("--sla-tpot", type=FiniteFloat(0.0, 1e6, low_open=True), default=0.030,
              show_default=True, help="SLA: time per output token at most this (s).")
@click.option("--no-step-cache", is_flag=True,
              help="Simulate every step even when an identical step (same chunks of the "
              "same recorded requests on the same ranks) ran before; the cache is exact, "
              "this only costs time (docs/serve.md).")
@click.option("--seed", type=click.IntRange(0, Limits.MAX_SEED), default=0, show_default=True,
              help="Seeds the arrivals; same seed, same results.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report directory (default: reports/serve-<trace>-<topology>-<policy>-"
              "r<rate>/); the replay report's rules: nothing macssim did not write is touched.")
@click.option("--force", is_flag=True, help="Replace an earlier macssim report in --out.")
def command(trace_path, topology, policy, gamma, rate, num_requests, arrivals, output_tokens,
            token_budget, max_seqs, placement, redundant_experts, attention_tp, kv_cache_tokens,
            no_chunked_prefill, sla_ttft, sla_tpot, no_step_cache, seed, out_dir,
            force) -> None:
    """Serve requests on a simulated cluster: Poisson arrivals (or a file), continuous
    batching with chunked prefill on data-parallel attention ranks, every step's routing
    composed from its requests' recorded routing and simulated under one policy.

    \b
    Prints the run's TTFT, TPOT, throughput, goodput under the SLA, GPU utilisation and
    straggler share; writes requests.csv, steps.csv, summary.csv and run.json.

    \b
    Examples:
      macssim serve --rate 20 --requests 64 --policy macs --topology 8xH100
      macssim serve --arrivals arrivals.csv --output-tokens 128 --sla-ttft 2 --sla-tpot 0.03
    """
    from tqdm import tqdm

    from macssim.serve import SchedulerConfig, ServeConfig, Sla, serve, write_serve_report

    trace_path = trace_path or DEFAULT_TRACE
    with library_errors():
        config = ServeConfig(
            trace=trace_path, topology=topology, policy=policy, capacity_factor=gamma,
            rate_per_s=rate, num_requests=num_requests, arrivals=arrivals,
            output_tokens=output_tokens,
            scheduler=SchedulerConfig(token_budget=token_budget, max_seqs=max_seqs,
                                      chunked_prefill=not no_chunked_prefill,
                                      kv_cache_tokens=kv_cache_tokens),
            sla=Sla(ttft_s=sla_ttft, tpot_s=sla_tpot), seed=seed,
            step_cache=not no_step_cache, placement=placement,
            redundant_experts=redundant_experts, attention_tp=attention_tp)
        topo = Path(topology).stem if topology.endswith((".yaml", ".yml")) else topology
        load = f"a-{arrivals.stem}" if arrivals else f"r{rate:g}"
        out_dir = out_dir or Path("reports") / f"serve-{trace_path.stem}-{topo}-{policy}-{load}"
        bar = tqdm(total=None, unit="step", desc="serve", disable=None, file=sys.stderr)

        def progress(done: int, _duration_s: float) -> None:
            bar.update(done - bar.n)

        try:
            result = serve(config, progress=progress)
        finally:
            bar.close()
        report = write_serve_report(result, out_dir, ["macssim", *sys.argv[1:]], force=force)
    s = result.summary
    click.echo(f"{result.model.name} on {result.topology.name}, policy {policy} "
               f"(γ={gamma:g}): {s['requests']} requests, {s['steps']} steps, "
               f"{s['duration_s']:.3f} s simulated in {result.wall_s:.1f} s")
    cache = result.replay.get("step_cache", {})
    if cache.get("on"):
        click.echo(f"steps simulated: {cache['misses']}, identical steps reused: "
                   f"{cache['hits']} (exact; --no-step-cache to simulate every one)")
    echo_table(["metric", "mean", "p50", "p90", "p99"],
               [[f"{name} ms", *(s[f"{name}_s_{q}"] * 1e3 for q in ("mean", "p50", "p90",
                                                                     "p99"))]
                for name in ("ttft", "tpot", "e2e_latency")])
    click.echo("")
    echo_table(["throughput", "value"], [
        ["requests/s", s["requests_per_s"]], ["output tokens/s", s["output_tokens_per_s"]],
        ["total tokens/s", s["total_tokens_per_s"]],
        [f"goodput req/s (TTFT ≤ {sla_ttft:g} s, TPOT ≤ {sla_tpot:g} s)",
         s["goodput_requests_per_s"]],
        ["SLA attainment", s["sla_attainment"]], ["GPU utilisation", s["gpu_utilisation"]],
        ["straggler share", s["straggler_share"]], ["max queue", s["max_waiting"]]])
    shown = os.path.relpath(report.directory)
    click.echo(f"\nreport: {report.directory if shown.startswith('..') else shown}  "
               f"({', '.join(report.files)})")
