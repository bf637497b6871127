"""``macssim replay``: the main job — a trace through policies and a simulated cluster."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

from macssim._resources import DEFAULT_TRACE
from macssim._validate import Limits, cuda_problem
from macssim.cli._output import Progress, echo_table, library_errors
from macssim.cli._types import FiniteFloat

__all__ = ["command"]

DEFAULT_POLICIES = "macs,expanded-drop,token-drop"


def _brief(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _parse_params(values: tuple[str, ...]) -> dict[str, dict[str, object]]:
    """``macs.rho=1.0`` -> {"macs": {"rho": 1.0}}; numbers become floats/ints. Each value
    is checked against what its policy declares (known policy and parameter, a finite
    number in range or one of the choices): a bad one is a usage error naming --param."""
    from macssim._errors import PolicyError
    from macssim.policies._registry import check_policy_params

    out: dict[str, dict[str, object]] = {}
    for item in values:
        m = re.fullmatch(r"([a-z-]+)\.([a-z_]+)=(.+)", item, flags=re.S)
        if not m:
            raise click.BadParameter(f"{_brief(item)}: expected POLICY.NAME=VALUE, e.g. "
                                     "macs.rho=1.0", param_hint="--param")
        policy, name, raw = m.groups()
        value: object = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except (ValueError, OverflowError):
                continue
        try:
            check_policy_params(policy, {name: value})
        except PolicyError as e:
            raise click.BadParameter(f"{_brief(item)}: {e}", param_hint="--param") from e
        out.setdefault(policy, {})[name] = value
    return out


def _check_policy_names(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Every name in --policy is a known policy."""
    from macssim.policies import list_policies

    known = list(list_policies())
    names = [p.strip() for p in value.split(",") if p.strip()]
    if not names:
        raise click.BadParameter(f"no policy given; known: {', '.join(known)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        shown = ", ".join(_brief(n) for n in unknown[:5])
        raise click.BadParameter(f"unknown policy {shown}; known: {', '.join(known)}")
    return value


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``cuda`` only where torch sees a CUDA GPU."""
    if value == "cuda" and (problem := cuda_problem(value)):
        raise click.BadParameter(f"cuda: {problem}; use cpu")
    return value


def _default_out(trace: Path, topology: str, gamma: float) -> Path:
    topo = Path(topology).stem if topology.endswith((".yaml", ".yml")) else topology
    return Path("reports") / f"{trace.stem}-{topo}-g{gamma:g}"


@click.command("replay")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Trace to replay (format v1). Default: the bundled "
              "default trace (Qwen3-VL-30B-A3B, image-heavy, synthetic; in macssim/data/traces/).")
@click.option("--policy", "policies", default=DEFAULT_POLICIES, show_default=True,
              callback=_check_policy_names,
              help="Policies to replay side by side, comma-separated: vanilla, token-drop, "
              "expanded-drop, macs. token-drop is always added as the baseline of the ratios.")
@click.option("--topology", default="8xH100", show_default=True,
              help="Preset name (8xH100, 8xH200, 8xH800, 16xH100, 64xH100) or a path to a "
              "topology YAML.")
@click.option("--capacity-factor", "gamma",
              type=FiniteFloat(0.0, Limits.MAX_CAPACITY_FACTOR, low_open=True), default=1.0,
              show_default=True, help="γ, a finite number in (0, 1e6]: each expert's "
              "capacity is ceil(γ·T·k/E) assignments per layer and step.")
@click.option("--param", "params", multiple=True, metavar="POLICY.NAME=VALUE",
              help="A policy parameter, e.g. macs.rho=1.0, macs.delta=2, "
              "token-drop.drop_policy=position; checked against what the policy takes "
              "(docs/policies.md). Repeatable.")
@click.option("--steps", "max_steps", type=click.IntRange(1, Limits.MAX_STEPS), default=None,
              help="Replay only the first N steps.")
@click.option("--calibration-trace", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Trace to calibrate MACS's expert modality labels on "
              "(default: the replayed trace).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report directory. Default: reports/<trace>-<topology>-g<γ>/ under the "
              "current directory. A folder holding anything but an earlier macssim report is "
              "refused (nothing in it is touched); beside an earlier report the new one goes "
              "to DIR-2, DIR-3, … unless --force.")
@click.option("--force", is_flag=True,
              help="Replace an earlier macssim report in --out (only files it wrote).")
@click.option("--seed", type=click.IntRange(0, Limits.MAX_SEED), default=0, show_default=True,
              help="Seed, recorded in run.json.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              callback=_check_device, help="Where the policies run (cuda: a CUDA GPU torch sees).")
@click.option("--network-rtol", type=FiniteFloat(0.0, 1.0, high_open=True), default=0.0,
              show_default=True, help="0: exact max-min link sharing. > 0: flows ending within "
              "this fraction of each other end together; 0.02 makes 64-GPU steps ~3x faster "
              "for ~1 % latency change.")
@click.option("--alltoall", type=click.Choice(["nccl", "deepep-normal", "deepep-ll", "ideal"]),
              default=None, help="All-to-all engine for dispatch and combine, overriding the "
              "topology's (default: the topology's alltoall field, nccl when absent); "
              "docs/cluster.md.")
@click.option("--precision", type=click.Choice(["bf16", "fp8-experts", "fp8"]), default="bf16",
              show_default=True, help="Compute and dispatch precision: bf16 (every phase "
              "BF16); fp8-experts (routed and shared experts at the FP8 peak with 1-byte "
              "weights, FP8 dispatch, BF16 combine); fp8 (also attention projections, dense "
              "MLP and LM head in FP8). FP8 needs the topology's gpu.fp8_flops_per_s; "
              "docs/cluster.md.")
@click.option("--attention-tp", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="GPUs sharing one attention by tensor parallelism (1: data-parallel "
              "attention, each GPU its own requests). t > 1 splits heads, dense MLP and LM "
              "head over groups of t GPUs of a node, all-reduces the attention output and "
              "dispatches the group's tokens evenly from its GPUs; docs/cluster.md.")
@click.option("--costs", type=click.Choice(["auto", "measured", "roofline"]), default="auto",
              show_default=True, help="Where compute costs come from: measured tables (the "
              "topology's cost_tables, from --tables or an installed aiconfigurator-core; "
              "the roofline for shapes they do not cover), or the roofline. auto: measured "
              "where tables are found, else the roofline (said once); docs/cost-tables.md.")
@click.option("--tables", "tables_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Directory of measured tables in macssim's format "
              "(gemm.csv, moe.csv: what `macssim cost convert` writes). Default: the "
              "installed aiconfigurator-core's, if any.")
@click.option("--capacity-in-decode", is_flag=True,
              help="Cap decode steps too. Default: decode steps route as vanilla, as "
              "CAI-MoE's code does (no capacity at sequence length 1).")
@click.option("--jobs", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Worker processes simulating (policy, step) pairs side by side; the "
              "results are the same for any value.")
@click.option("--placement", type=click.Choice(["contiguous", "eplb"]), default="contiguous",
              show_default=True, help="Expert placement: contiguous (GPU g holds experts "
              "[g·E/G, (g+1)·E/G)) or eplb (DeepSeek's expert-parallel load balancer on the "
              "replayed steps' expert loads: the hottest experts replicated into "
              "--redundant-experts slots, slots packed to even out GPU loads; one placement "
              "per MoE layer). Any policy runs on it; docs/policies.md.")
@click.option("--redundant-experts", type=click.IntRange(0, 1 << 16), default=0,
              show_default=True, help="Extra expert slots for eplb's replicas (experts + N "
              "must be a multiple of the GPUs, e.g. 8 or 16 for 128 experts on 8 GPUs).")
@click.option("--list", "list_only", is_flag=True, help="List policies and topology presets.")
def command(trace_path, policies, topology, gamma, params, max_steps, calibration_trace,
            out_dir, force, seed, device, network_rtol, alltoall, precision, attention_tp, costs,
            tables_dir, capacity_in_decode, jobs, placement, redundant_experts,
            list_only) -> None:
    """Replay a routing trace through a simulated expert-parallel cluster under each
    policy and measure the straggler delay each leaves.

    \b
    Per step and MoE layer: attention on each GPU, the policy's dispatch plan,
    dispatch all-to-all, expert GEMMs, combine all-to-all, barrier. Prints a summary
    table and writes CSVs (summary, per step x layer, per step, per GPU phase, drops),
    plots (GPU x layer load heatmap, straggler delay per layer, latency CDF), a
    Perfetto timeline and run.json.

    \b
    Examples:
      macssim replay --policy macs,token-drop --topology 8xH100
      macssim replay --trace my.mtrace --policy macs --topology 16xH100 --capacity-factor 1.25
    """

    from macssim.hardware import list_topology_presets
    from macssim.policies import list_policies
    from macssim.replay import ReplayConfig, replay
    from macssim.report import ReportWriter

    if list_only:
        echo_table(["policy", "what it does"], list(list_policies().items()))
        click.echo("\ntopology presets: " + ", ".join(list_topology_presets()))
        return
    trace_path = trace_path or DEFAULT_TRACE
    names = tuple(p.strip() for p in policies.split(",") if p.strip())
    config = ReplayConfig(trace=trace_path, policies=names, topology=topology,
                          capacity_factor=gamma, policy_params=_parse_params(params),
                          max_steps=max_steps, calibration_trace=calibration_trace, seed=seed,
                          device=device, network_rtol=network_rtol, alltoall=alltoall,
                          precision=precision, attention_tp=attention_tp, costs=costs,
                          tables=tables_dir, capacity_in_decode=capacity_in_decode,
                          placement=placement, redundant_experts=redundant_experts, jobs=jobs)
    out_dir = out_dir or _default_out(trace_path, topology, gamma)
    with library_errors():
        with ReportWriter(out_dir, force=force) as writer:
            with Progress("replay", "policy x step") as progress:
                result = replay(config, progress=progress, on_phases=writer.append_phases)
            report = writer.finish(result, command_line=["macssim", *sys.argv[1:]])
    if result.costs.get("note"):
        click.echo(result.costs["note"])
    gaps = result.score_gaps
    if gaps and gaps["token_layers"]:
        click.echo(f"scores: the trace keeps each token's top {gaps['scores_kept_per_token']} "
                   f"router scores; {', '.join(gaps['policies'])}: "
                   f"{gaps['token_layers'] / gaps['of']:.1%} of token-layers had experts on "
                   "their GPU without a score, which were no candidates (plans may differ "
                   "from full scores; a trace with every score, v1 or v2 with top_n all, "
                   "gives exact plans; docs/trace-format.md)")
    _print_summary(report.summary, result)
    click.echo(f"\nreport: {_shown(report.directory)}  ({', '.join(report.files)})")
    if report.directory != Path(os.path.abspath(out_dir)):
        click.echo(f"({out_dir} holds an earlier report; --force replaces it)")


def _shown(path: Path) -> str:
    """A path as the user would write it: relative when under the current directory."""
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else relative


def _placement_text(result) -> str:
    """The placement in one line: kind, redundant slots, what layer 0 replicated."""
    cfg = result.config
    if cfg.placement == "contiguous" or not result.placements:
        return cfg.placement
    import numpy as np

    replicas = np.bincount(result.placements[0].slot_expert)
    hot = np.flatnonzero(replicas > 1)
    shown = ", ".join(f"{e}×{replicas[e]}" for e in hot[:6]) + (" …" if hot.size > 6 else "")
    return (f"{cfg.placement}, {cfg.redundant_experts} redundant slots, one placement per "
            f"layer from the replayed steps' loads (layer 0 replicates: {shown or 'none'})")


def _workload_text(steps) -> str:
    """One line: what the replayed trace asks of the cluster (requests, tokens, steps)."""
    one = steps[steps.policy == steps.policy.iloc[0]]
    parts = []
    for kind, noun in (("prefill", "prompt tokens"), ("decode", "live sequences")):
        sel = one[one.kind == kind]
        if sel.empty:
            continue
        size = sel.tokens if kind == "prefill" else sel.requests
        span = (f"{size.iloc[0]:,}" if size.min() == size.max()
                else f"{size.min():,}–{size.max():,} (mean {size.mean():,.0f})")
        noun = noun[:-1] if span == "1" else noun
        parts.append(f"{len(sel)} {kind} step{'s' if len(sel) > 1 else ''} of {span} {noun}")
    requests = int(one[one.kind == "prefill"].requests.sum()) if (one.kind == "prefill").any() \
        else int(one.requests.max())
    return (f"{requests} request{'s' if requests != 1 else ''}, {int(one.tokens.sum()):,} "
            f"tokens: " + "; ".join(parts))


def _print_summary(summary, result) -> None:
    m = result.model
    click.echo(f"{m.name} on {result.topology.name}: {result.steps.step.nunique()} steps, "
               f"{m.num_moe_layers} MoE layers, E={m.num_experts}, k={m.top_k}, "
               f"γ={result.config.capacity_factor:g}")
    click.echo(f"workload: {_workload_text(result.steps)}")
    click.echo(f"placement: {_placement_text(result)}")
    if "macs" in result.policies:
        calib = result.config.calibration_trace
        click.echo("MACS expert labels calibrated on " + (
            f"{calib} (held out)" if calib is not None else
            "the replayed trace itself (in-sample; --calibration-trace for a held-out one)"))
    click.echo("")
    by_kind = summary[summary.kind != "all"] if (summary.kind != "all").any() else summary
    rows = []
    for _, r in by_kind.iterrows():
        ratio = r.get("moe_latency_mean_s_vs_token_drop", float("nan"))
        rows.append([r.policy, result.config.placement, r.kind, r.steps,
                     r.moe_latency_mean_s * 1e6,
                     r.moe_latency_p99_s * 1e6, r.straggler_delay_mean_s * 1e6,
                     r.straggler_share, r.imbalance_mean, r.step_latency_mean_s * 1e3,
                     r.tokens_per_s, r.moe_share, ratio])
    echo_table(["policy", "placement", "kind", "steps", "MoE lat mean µs", "p99 µs", "straggler µs",
                "strag share", "imbalance", "step ms", "tokens/s", "MoE share",
                "MoE lat vs TD"], rows)
    click.echo("")
    modalities = [c.removeprefix("dropped_semantic_mass_frac_") for c in summary.columns
                  if c.startswith("dropped_semantic_mass_frac_") and "_vs_" not in c]
    from macssim.policies import YARDSTICK_DELTA

    click.echo("what each policy dropped (fractions over all steps; semantic mass weighted "
               f"with δ = {YARDSTICK_DELTA:g} for every policy; n/a: the trace cannot "
               "support it):")
    headers = ["policy", "dropped assign", "dropped gate mass", "dropped semantic"]
    headers += [f"semantic {m}" for m in modalities] + ["no expert left", "semantic vs TD"]
    rows = []
    for _, r in summary[summary.kind == "all"].iterrows():
        cells = ([r.dropped_assignments_frac, r.dropped_gate_mass_frac,
                  r.dropped_semantic_mass_frac]
                 + [r[f"dropped_semantic_mass_frac_{m}"] for m in modalities]
                 + [r.tokens_lost_all_frac,
                    r.get("dropped_semantic_mass_frac_vs_token_drop", float("nan"))])
        rows.append([r.policy] + ["n/a" if v != v else v for v in cells])
    echo_table(headers, rows)
