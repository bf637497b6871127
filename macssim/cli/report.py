"""``macssim report``: a sweep's results table as a page a planner can act on."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from macssim.cli._output import library_errors

__all__ = ["command"]


@click.command("report")
@click.argument("results", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Report directory. Default: RESULTS' name without its "
              "suffix plus '-report', beside it. An earlier macssim report there is kept "
              "(the new one goes beside it) unless --force; anything else is never touched.")
@click.option("--force", is_flag=True, help="Replace an earlier macssim report at --out.")
@click.option("--sla", "bounds", multiple=True, metavar="NAME<=VALUE",
              help="A bound on a table figure, repeatable, as for `macssim recommend`: the "
              "page then shows the cheapest configuration meeting every bound, and the "
              "cheapest with MACS and with Token Drop beside it.")
@click.option("--kind", type=click.Choice(["all", "prefill", "decode", "serve"]), default=None,
              help="Which summary rows --sla judges (as for `macssim recommend`).")
def command(results, out_dir, force, bounds, kind) -> None:
    """Write a self-contained index.html from a sweep's RESULTS table (from `macssim
    sweep`), with each plot also as PNG and SVG and the table as results.csv.

    \b
    The page: throughput per GPU against throughput per user (Pareto front per policy);
    with --sla, the cheapest configuration meeting it and what MACS changes; MoE latency
    against dropped semantic mass across capacity factors; EPLB's redundant experts
    against imbalance (when the sweep varied them); drops per modality; every
    configuration in a sortable table; the failed points; the commands and versions.

    \b
    Example:
      macssim sweep --capacity-factor 1,1.25,1.5 --placement contiguous,eplb \\
          --redundant-experts 0,16 --steps 4 --out results.parquet
      macssim report results.parquet --sla moe_latency_p99_s<=0.0003
    """
    import pandas as pd

    from macssim import __version__
    from macssim.report import Choice, write_sweep_report
    from macssim.sweep import default_kind, parse_bound, read_results, recommend

    with library_errors():
        rows, _ = read_results(results)
        sla = [parse_bound(b) for b in bounds]
        kind = kind or default_kind(rows)
        choices = []
        if sla:
            for label, only in (("cheapest", None), ("cheapest with macs", ["macs"]),
                                ("cheapest with token-drop", ["token-drop"])):
                if only and not any(r.get("policy") == only[0] for r in rows):
                    continue
                rec = recommend(rows, sla, kind=kind, policies=only)
                choices.append(Choice(label, rec.best if rec.met else None,
                                      "" if rec.met else "none meets the SLA"))
        target = out_dir or results.with_name(results.stem + "-report")
        report = write_sweep_report(
            pd.DataFrame(rows), target, source=str(results),
            command_line=["macssim", *sys.argv[1:]], versions=_versions(__version__),
            sla=[str(b) for b in sla], choices=choices, force=force)
    click.echo(f"report: {report.directory}/index.html  ({', '.join(report.files)})")


def _versions(version: str) -> dict[str, str]:
    import platform

    import matplotlib
    import numpy as np
    import pandas as pd
    import pyarrow

    return {"macssim": version, "python": platform.python_version(),
            "numpy": np.__version__, "pandas": pd.__version__,
            "matplotlib": matplotlib.__version__, "pyarrow": pyarrow.__version__}
