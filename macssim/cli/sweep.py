"""``macssim sweep``: many replays over a cartesian product, into one Parquet table."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from macssim._validate import Limits
from macssim.cli._output import echo_table, library_errors
from macssim.sweep._axes import AXES

__all__ = ["command"]


def _axis_options(f):
    """One comma-separated option per axis of the table (``macssim.sweep.AXES``)."""
    for ax in reversed(AXES):
        default = ", ".join(map(str, ax.default)) or "none"
        f = click.option(ax.flag, f"axis_{ax.name}", default=None, metavar="V1,V2,…",
                         help=f"Axis: {ax.help} (default: {default}).")(f)
    return f


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [v.strip() for v in text.split(",")]


class _Progress:
    """A tqdm bar with ETA on a terminal; a plain line every few seconds when piped."""

    def __init__(self) -> None:
        self.bar = None
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int, failed: int) -> None:
        if sys.stderr.isatty():
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="point", desc="sweep", file=sys.stderr)
            self.bar.set_postfix(failed=failed)
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if done == total or now - self.last >= 5.0:
            self.last = now
            elapsed = now - self.start
            eta = elapsed / done * (total - done)
            click.echo(f"sweep: {done}/{total} points ({failed} failed), "
                       f"{elapsed:.0f} s elapsed, ETA {eta:.0f} s", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command("sweep")
@click.argument("spec", required=False, type=click.Path(dir_okay=False, path_type=Path))
@_axis_options
@click.option("--policy", "policies", default=None, metavar="P1,P2,…",
              help="Policies replayed side by side at every point, one row each (default: "
              "macs,expanded-drop,token-drop; token-drop is always added as the baseline).")
@click.option("--steps", type=click.IntRange(1, Limits.MAX_STEPS), default=None,
              help="Replay only the first N steps of each trace.")
@click.option("--model", default=None, help="Model preset for scenarios "
              "(default: qwen3-vl-30b-a3b).")
@click.option("--scenario-steps", type=click.IntRange(1, Limits.MAX_STEPS), default=None,
              help="Steps synthesised per scenario point (default: 8).")
@click.option("--seed", type=click.IntRange(0, Limits.MAX_SEED), default=None,
              help="Seed of every point (default: 0).")
@click.option("--requests", type=click.IntRange(1, Limits.MAX_STEPS), default=None,
              help="Serving sweeps (--arrival-rate): requests each run serves (default: 32).")
@click.option("--sla-ttft", type=float, default=None,
              help="Serving sweeps: the SLA's time to first token, s (default: 2.0).")
@click.option("--sla-tpot", type=float, default=None,
              help="Serving sweeps: the SLA's time per output token, s (default: 0.03).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("sweep.parquet"), show_default=True,
              help="Results table (Parquet). An existing file that is not a macssim sweep "
              "table is never touched.")
@click.option("--jobs", "-j", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Points run at once: worker processes (one torch thread each), or the "
              "CPUs of a local Ray instance.")
@click.option("--ray", "ray", is_flag=False, flag_value="local", default=None,
              metavar="[ADDRESS]", help="Run the points as Ray tasks: on the cluster at "
              "ADDRESS, or alone, on a Ray instance started here (pip install "
              "'macssim[ray]').")
@click.option("--resume", is_flag=True, help="Continue the table at --out: points already "
              "finished there (same axes, settings and macssim version) are skipped; failed "
              "points run again.")
@click.option("--force", is_flag=True, help="Replace the sweep table at --out (only a "
              "macssim sweep table).")
@click.option("--dry-run", is_flag=True, help="List the points and exit.")
def command(spec, policies, steps, model, scenario_steps, seed, requests, sla_ttft, sla_tpot,
            out, jobs, ray, resume, force, dry_run, **axis_values) -> None:
    """Replay every combination of the axes below and stream one row per point ×
    policy into a Parquet table, for `macssim recommend` and your own analysis.

    \b
    The axes come from flags (comma-separated) or a YAML file SPEC (flags win):
      traces: [a.mtrace, b.mtrace]      # or scenarios: [docvqa, chat]
      topologies: [8xH100, 16xH100]
      capacity_factors: [1.0, 1.25]
      precisions: [bf16, fp8-experts]
      alltoall: [nccl, deepep-ll]
      policies: [macs, token-drop]      # settings shared by every point
      steps: 4
    A failing point is recorded with its error and the sweep goes on. docs/sweep.md.

    \b
    Examples:
      macssim sweep --topology 8xH100,16xH100 --capacity-factor 1,1.25 --steps 4 -j 2
      macssim sweep sweep.yaml --out results.parquet --resume
      macssim sweep sweep.yaml --ray               # a local Ray instance
      macssim sweep --arrival-rate 5,10,20 --topology 8xH100,16xH100 --policy macs,token-drop
          # serving: each point serves Poisson arrivals, one row per policy (kind serve)
    """
    from macssim.sweep import load_sweep, make_sweep, run_sweep

    overrides = {ax.name: [ax.parse(v) for v in _split(axis_values[f"axis_{ax.name}"])]
                 for ax in AXES if axis_values[f"axis_{ax.name}"] is not None}
    settings = {"policies": policies, "steps": steps, "model": model,
                "scenario_steps": scenario_steps, "seed": seed, "requests": requests,
                "sla_ttft": sla_ttft, "sla_tpot": sla_tpot}
    settings = {k: v for k, v in settings.items() if v is not None}
    with library_errors():
        if spec is not None:
            sweep = load_sweep(spec, overrides, settings)
        else:
            sweep = make_sweep(overrides, settings, where="sweep flags")
        points = sweep.points()
        if dry_run:
            names = list(points[0].axes)
            echo_table(["#", *names, "point_id"],
                       [[p.index, *p.axes.values(), p.point_id] for p in points])
            return
        progress = _Progress()
        try:
            outcome = run_sweep(sweep, out, jobs=jobs, ray=ray, resume=resume, force=force,
                                progress=progress)
        finally:
            progress.close()
    if outcome.ran == 0:
        click.echo(f"all {outcome.points} points are already in {out}; nothing to run")
    else:
        click.echo(f"{outcome.ran} points run in {outcome.elapsed_s:.1f} s"
                   + (f" ({outcome.skipped} already done)" if outcome.skipped else "")
                   + (f"; {outcome.failed} failed (their errors are in the table)"
                      if outcome.failed else ""))
    click.echo(f"results: {out}")
