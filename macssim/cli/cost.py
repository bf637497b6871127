"""``macssim cost``: one operation's predicted time, to check against your own benchmark.

The numbers come from a measured table (macssim's format, docs/cost-tables.md: your own
measurements, or NVIDIA aiconfigurator-core's converted with ``cost convert``),
interpolated log-log between measured neighbours; a query outside the measured range is
refused rather than guessed."""

from __future__ import annotations

from pathlib import Path

import click

from macssim._errors import MacssimError
from macssim.cli._output import echo_table

__all__ = ["command"]


@click.group("cost")
def command() -> None:
    """Predict one operation's time from a measured table (GEMM, fused MoE, NCCL
    collectives, DeepEP dispatch/combine).

    \b
    Examples:
      macssim cost convert --system h100_sxm --out tables/     (needs aiconfigurator-core)
      macssim cost predict tables/gemm.csv dtype=bfloat16 m=300 n=4096 k=7168
      macssim cost keys tables/nccl.csv
    """


@command.command("predict")
@click.argument("table", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("keys", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.option("--extrapolate", is_flag=True,
              help="Allow a size up to 2x beyond the measured range (flagged in the output).")
def predict_command(table: Path, keys: tuple[str, ...], extrapolate: bool) -> None:
    """Predicted latency of one operation: KEY=VALUE for each column that identifies it
    (see `macssim cost keys TABLE`); size keys may lie between measured values."""
    from macssim.cost import load_table, predict_detail

    query = {}
    for item in keys:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="KEYS")
        query[name.strip()] = _value(raw.strip())
    try:
        cost = load_table(table)
        result = predict_detail(cost, extrapolate=extrapolate, **query)
    except MacssimError as e:
        raise click.ClickException(str(e)) from e
    how = ("measured" if result.exact else
           "extrapolated" if result.extrapolated else "interpolated")
    echo_table(["op", "latency µs", "how"], [[cost.schema.name, result.latency_s * 1e6, how]])


@command.command("keys")
@click.argument("table", type=click.Path(dir_okay=False, path_type=Path))
def keys_command(table: Path) -> None:
    """The columns a query on TABLE names, and the values measured for each."""
    from macssim.cost import load_table

    try:
        cost = load_table(table)
    except MacssimError as e:
        raise click.ClickException(str(e)) from e
    schema = cost.schema
    rows = []
    for column in schema.exact + schema.sizes:
        values = cost.values(column)
        shown = ", ".join(map(str, values[:8])) + (f", … ({len(values)})" if len(values) > 8
                                                    else "")
        rows.append([column, "size (interpolated)" if column in schema.sizes else "exact",
                     shown])
    click.echo(f"{table}: {schema.name}, {len(cost)} measurements — {schema.doc}\n")
    echo_table(["key", "kind", "measured values"], rows)


@command.command("convert")
@click.option("--system", default="h100_sxm", show_default=True,
              help="aiconfigurator-core system name (h100_sxm, h200_sxm, b200_sxm, …).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for gemm.csv, moe.csv, nccl.csv, deepep.csv (created; an "
              "existing file is never overwritten).")
def convert_command(system: str, out: Path) -> None:
    """Convert aiconfigurator-core's measured tables for one system into macssim's format
    (pip install -e ".[aiconfigurator]"). `macssim replay --tables OUT` then reads
    gemm.csv and moe.csv from it, with no aiconfigurator-core installed."""
    from macssim.cost import save_table, tables_from_aiconfigurator

    try:
        tables = tables_from_aiconfigurator(system)
        targets = {op: out / f"{op}.csv" for op in tables}
        existing = [str(p) for p in targets.values() if p.exists()]
        if existing:
            raise click.ClickException(f"{', '.join(existing)}: exists; macssim never "
                                       "overwrites it — give another --out")
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        for op, table in tables.items():
            save_table(table, targets[op])
            rows.append([op, len(table), str(targets[op])])
    except MacssimError as e:
        raise click.ClickException(str(e)) from e
    echo_table(["op", "measurements", "file"], rows)


def _value(raw: str) -> object:
    """An int where the text is one, then a float, else the text (a label)."""
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            continue
    return raw
