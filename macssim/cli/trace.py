"""``macssim trace info|validate|convert``: look inside a trace before replaying it, and
turn a v1 trace into v2."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from macssim._errors import TraceError
from macssim._validate import brief
from macssim.cli._output import echo_table, library_errors
from macssim.trace import DEFAULT_TOP_N, TraceWriter, open_trace, summarize_trace

__all__ = ["command"]


@click.group("trace")
def command() -> None:
    """Inspect, check and convert trace files (formats v1 and v2, see
    docs/trace-format.md)."""


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
    trace = open_trace(path)
    kept = ("all" if trace.scores_complete else
            f"top {trace.scores_top_n} of {trace.model.num_experts} per token-layer"
            if trace.scores_top_n else "none")
    click.echo(f"format    v{trace.version}, scores: {kept}")
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
    """Read every step of PATH and check it against its format (version, model facts,
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
    click.echo(f"{path}: valid macssim trace v{trace.version}, {steps} steps, "
               f"{trace.num_tokens} tokens")


@command.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--top-n", "top_n", default=DEFAULT_TOP_N, show_default=True,
              help='Router scores to keep per token and layer (v2): an integer N > top_k, '
                   '"2k", or "all" for every expert\'s (exact for every policy; see '
                   "docs/trace-format.md for what fewer scores lose).")
@click.option("--codec", type=click.Choice(["zstd", "zlib", "none"]), default=None,
              help="Compression of each step (default: zstd for v2, none for v1).")
@click.option("--format-version", "version", type=click.Choice(["1", "2"]), default="2",
              show_default=True, help="Format to write.")
@click.option("--force", is_flag=True, help="Replace DST if it holds a macssim trace.")
def convert(src: Path, dst: Path, top_n: str, codec: str | None, version: str,
            force: bool) -> None:
    """Rewrite the trace SRC as DST in format v2 (or v1), step by step: every step is
    read and checked, then written; DST appears only when complete. A v2 trace with
    top-N scores cannot become v1 or keep more scores than it has."""
    with library_errors():
        n: int | str | None = top_n
        if top_n not in (DEFAULT_TOP_N, "all"):
            try:
                n = int(top_n)
            except ValueError:
                raise click.BadParameter(f'expected an integer, "2k" or "all", got {top_n!r}',
                                         param_hint="--top-n") from None
        if src.resolve() == dst.resolve():
            raise TraceError(f"{dst}: convert writes a new file; give another output path")
        trace = open_trace(src)
        provenance = dict(trace.provenance)
        provenance["converted_from"] = {"file": src.name, "format_version": trace.version}
        kwargs = {"top_n": n} if version == "2" else {}
        with TraceWriter(dst, trace.model, provenance, fields=trace.fields, replace=force,
                         format_version=int(version), codec=codec, **kwargs) as writer:
            for step in trace:
                writer.write(step)
    before, after = src.stat().st_size, dst.stat().st_size
    click.echo(f"{src} (v{trace.version}, {before / 1e6:.1f} MB) -> {dst} (v{version}, "
               f"{after / 1e6:.1f} MB, {after / max(before, 1):.3f} of the size), "
               f"{trace.num_steps} steps")


def _plain(value: object) -> str:
    """A provenance value on one short line, whatever a stranger's file put there."""
    text = value if isinstance(value, str) else brief(value)
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."
