"""``macssim recommend``: the cheapest configuration of a sweep that meets an SLA."""

from __future__ import annotations

import math
from pathlib import Path

import click

from macssim.cli._output import echo_table, library_errors

__all__ = ["command"]

_SHOWN = ("topology", "num_gpus", "capacity_factor", "precision", "alltoall_engine",
          "placement", "redundant_experts", "arrival_rate", "policy")


def _where(row: dict) -> str:
    source = row.get("scenario") or row.get("trace")
    source = Path(source).name if source and "/" in source else source
    return f"point {row['point_index']} ({source})"


def _pct(m: float) -> str:
    return "n/a" if m == -math.inf else f"{m * 100:+.1f} %"


@click.command("recommend")
@click.argument("results", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--search", is_flag=True, help="No RESULTS table: run the small built-in search "
              "first (topologies 8xH100 and 16xH100 × capacity factors 1, 1.25, 1.5, policies "
              "macs and token-drop, the first 2 steps of --trace), then recommend from it.")
@click.option("--trace", "trace", default="default", show_default=True,
              help="With --search: the trace the search replays ('default': the bundled "
              "one).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --search: keep the search's table there (default: a temporary file, "
              "removed after).")
@click.option("--jobs", "-j", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="With --search: points run at once.")
@click.option("--sla", "bounds", multiple=True, required=True, metavar="NAME<=VALUE",
              help="A bound on a table figure, repeatable: moe_latency_p99_s<=0.0005, "
              "step_latency_mean_s<=0.05, dropped_semantic_mass_frac<=0.01, "
              "tokens_per_s>=20000 (docs/sweep.md lists them).")
@click.option("--kind", type=click.Choice(["all", "prefill", "decode", "serve"]), default=None,
              help="Which summary rows to judge: a replay's over all steps (the default), "
              "or prefill or decode steps only; a serving sweep's (serve, the default when "
              "the table has only those).")
@click.option("--policy", "policies", default=None, metavar="P1,P2,…",
              help="Consider only these policies (default: every policy in the table).")
def command(results, search, trace, out, jobs, bounds, kind, policies) -> None:
    """Print the cheapest configuration in a sweep's RESULTS table (or a small built-in
    search's, with --search) that meets every --sla bound, its margin on each bound, and
    the runner-up.

    \b
    Cheapest: the fewest GPUs, then the fewest GPU-seconds per token, then the least
    dropped semantic mass (docs/sweep.md). When no configuration meets the SLA, says so,
    shows the closest one and exits 1.

    \b
    Examples:
      macssim recommend results.parquet --sla moe_latency_p99_s<=0.0003 \\
          --sla dropped_semantic_mass_frac<=0.2
      macssim recommend --search --sla step_latency_mean_s<=0.02
    """
    from macssim.sweep import default_kind, parse_bound, read_results, recommend

    if (results is None) == (not search):
        raise click.UsageError("give a RESULTS table or --search (not both)")
    with library_errors():
        sla = [parse_bound(b) for b in bounds]
        rows = _search(trace, out, jobs) if search else read_results(results)[0]
        kind = kind or default_kind(rows)
        names = None if policies is None else [p.strip() for p in policies.split(",")]
        rec = recommend(rows, sla, kind=kind, policies=names)
    what = "serving runs" if kind == "serve" else f"{kind} steps"
    click.echo(f"{rec.candidates} configurations considered ({what}), {rec.meeting} "
               "meet the SLA" + (f"; {rec.failed_points} points failed and are not "
                                 "considered" if rec.failed_points else ""))
    click.echo("SLA: " + ", ".join(map(str, sla)))
    click.echo("")
    if not rec.met:
        click.echo("no configuration meets the SLA. The closest, "
                   f"{_where(rec.best)}, misses it by:")
        _table(rec.best, sla)
        raise SystemExit(1)
    click.echo(f"cheapest meeting it: {_where(rec.best)}")
    _table(rec.best, sla)
    click.echo(f"margin: {_pct(min(rec.margins.values()))} on its tightest bound")
    if rec.runner_up is None:
        click.echo("\nrunner-up: none (only one configuration meets the SLA)")
    else:
        click.echo(f"\nrunner-up: {_where(rec.runner_up)}")
        _table(rec.runner_up, sla)


def _search(trace: str, out: Path | None, jobs: int) -> list[dict]:
    """Run ``search_spec(trace)`` into ``out`` (or a temporary table) and read it back."""
    import tempfile

    from macssim.cli._output import Progress
    from macssim.sweep import read_results, run_sweep, search_spec

    spec = search_spec(trace)
    with tempfile.TemporaryDirectory(prefix="macssim-search-") as tmp:
        table = out or Path(tmp) / "search.parquet"
        click.echo(f"searching {spec.num_points()} configurations (docs/sweep.md, recommend "
                   "--search)", err=True)
        with Progress("search", "points") as bar:
            run_sweep(spec, table, jobs=jobs,
                      progress=lambda done, total, _failed: bar(done, total))
        rows, _ = read_results(table)
    return rows


def _table(row: dict, sla) -> None:
    shown = [c for c in _SHOWN if row.get(c) is not None]   # a replay row has no rate
    echo_table(shown, [[row.get(c) for c in shown]])
    rows = [[str(b), row.get(b.metric), _pct(b.margin(row))] for b in sla]
    echo_table(["bound", "value", "margin"], rows)
