"""``macssim trace info|validate``: look inside a trace before replaying it."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from macssim._errors import TraceError
from macssim._validate import brief
from macssim.cli._output import echo_table, library_errors
from macssim.trace import open_trace, summarize_trace

__all__ = ["command"]


@click.group("trace")
def command() -> None:
    """Inspect and check trace files (format v1, see docs/trace-format.md)."""


@command.command("info")
@click.argument("path", type=click.Path(path_type=Path))
def info(path: Path) -> None:
    """Summarise PATH: model, steps, tokens by modality, per-layer expert-load imbalance
    (max / mean over experts of the layer's assignments, summed over the whole trace)."""
    with library_errors():
        summary = summarize_trace(open_trace(path))
    prov = summary.provenance
    click.echo(f"trace     {summary.path}  ({summary.size_bytes / 1e6:.1f} MB)")
    click.echo(f"model     {summary.model}")
    click.echo(f"source    {_plain(prov.get('source', '?'))}"
               + "".join(f"  {k}={_plain(prov[k])}" for k in ("scenario", "seed", "model_id")
                         if k in prov))
    click.echo(f"steps     {summary.num_steps} ({summary.prefill_steps} prefill, "
               f"{summary.decode_steps} decode)")
    click.echo(f"fields    {', '.join(summary.fields)}")
    click.echo("")
    total = summary.num_tokens
    echo_table(["modality", "tokens", "share"],
               [[m, n, n / total if total else 0.0]
                for m, n in summary.tokens_by_modality.items()])
    imb = summary.expert_imbalance
    if imb.size:
        click.echo("")
        worst = int(np.argmax(imb))
        echo_table(["expert imbalance (max/mean)", "value"],
                   [["mean over layers", float(imb.mean())],
                    [f"worst layer ({worst})", float(imb[worst])],
                    [f"best layer ({int(np.argmin(imb))})", float(imb.min())]])


@command.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
def validate(path: Path) -> None:
    """Read every step of PATH and check it against format v1 (version, model facts,
    fields, lengths and offsets, shapes, dtypes, expert ids < E, no NaN/inf, no negative
    weights, checksums, truncation, the index's token total). Exits 1 with the file,
    step, layer and field of the first problem."""
    with library_errors():
        trace = open_trace(path)
        steps = tokens = 0
        for step in trace:
            steps += 1
            tokens += step.num_tokens
        if tokens != trace.num_tokens:
            raise TraceError(f'{path}: index: "num_tokens" is {trace.num_tokens}, but the '
                             f"steps hold {tokens} tokens")
    click.echo(f"{path}: valid macssim trace v1, {steps} steps, {trace.num_tokens} tokens")


def _plain(value: object) -> str:
    """A provenance value on one short line, whatever a stranger's file put there."""
    text = value if isinstance(value, str) else brief(value)
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."
