"""``macssim synth``: write a synthetic routing trace (no GPU, no weights needed)."""

from __future__ import annotations

import re

import click

from macssim._errors import MacssimError
from macssim._validate import Limits

__all__ = ["command"]


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _print_scenarios() -> None:
    from macssim.trace import get_scenario, list_scenarios

    rows = [("scenario", "batch", "decode", "prompt tok", "visual", "description")]
    for name in list_scenarios():
        s = get_scenario(name)
        rows.append((name, str(s.batch_size), str(s.decode_steps),
                     f"{s.mean_prompt_tokens():,.0f}", f"{s.visual_share():.0%}",
                     s.description))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True))
                   + "  " + row[5])
    click.echo("\nbatch: requests per prefill; decode: decode steps per batch; prompt tok: "
               "mean prompt tokens per request; visual: image+video share of prompt tokens")


def _print_summary(summary) -> None:
    from macssim.trace import calibration_of

    imb = summary.expert_imbalance
    rows = [
        ("model", summary.model),
        ("scenario", f"{summary.scenario} (seed {summary.seed})"),
        ("steps", f"{summary.num_steps} ({summary.prefill_steps} prefill, "
                  f"{summary.decode_steps} decode)"),
        ("requests", f"{summary.num_requests}"),
        ("tokens", f"{summary.num_tokens:,}"),
    ]
    rows += [(f"  {name}", f"{n:,}") for name, n in summary.tokens_by_modality.items() if n]
    rows += [
        ("routing skew", f"calibrated on {calibration_of(summary.model)}"),
        ("expert load max/mean", f"mean over layers {sum(imb) / len(imb):.2f}, "
                                 f"worst layer {max(imb):.2f} "
                                 f"(layer {imb.index(max(imb))})"),
        ("file size", _human_bytes(summary.file_bytes)),
    ]
    width = max(len(r[0]) for r in rows)
    for key, value in rows:
        click.echo(f"{key.ljust(width)}  {value}")
    click.echo(f"wrote {summary.path}")


def _top_n(text: str, top_k: int, num_experts: int) -> int | str:
    """--scores: "2k", "all", or an integer k < N (N >= E means all)."""
    if text in ("2k", "all"):
        return text
    try:
        n = int(text)
    except ValueError:
        raise click.BadParameter(f"expected 2k, all or an integer, got {text!r}",
                                 param_hint="--scores") from None
    if n <= top_k:
        raise click.BadParameter(f"must exceed top_k = {top_k}, got {n}", param_hint="--scores")
    return "all" if n >= num_experts else n


@click.command("synth", context_settings={"max_content_width": 100})
@click.option("--model", "model", default="qwen3-vl-30b-a3b", show_default=True,
              help="Model preset whose shape the trace takes (layers, experts, top-k).")
@click.option("--scenario", default="docvqa", show_default=True,
              help="Traffic scenario: a bundled name (see --list-scenarios) or a path to a "
                   "scenario YAML file.")
@click.option("--steps", type=click.IntRange(1, Limits.MAX_STEPS), default=64, show_default=True,
              help="Forward steps in all (prefill and decode steps together).")
@click.option("--seed", type=click.IntRange(0, Limits.MAX_SEED), default=0, show_default=True,
              help="Random seed; the same command and seed give a byte-identical file.")
@click.option("--out", "out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Trace file to write [default: <scenario>-seed<seed>.mtrace]. An existing "
                   "file is never overwritten, except an earlier trace with --force.")
@click.option("--force", is_flag=True, help="Replace an earlier macssim trace at --out.")
@click.option("--batch-size", type=click.IntRange(1, Limits.MAX_BATCH), default=None,
              help="Override the scenario's requests per prefill batch (a prefill step holds "
                   f"at most {Limits.MAX_TOKENS_PER_STEP:,} tokens).")
@click.option("--decode-steps", type=click.IntRange(0, Limits.MAX_STEPS), default=None,
              help="Override the scenario's decode steps after each prefill (tokens).")
@click.option("--format", "trace_format", type=click.Choice(["v2", "v1"]), default="v2",
              show_default=True, help="Trace format: v2 (compact: top-N scores, zstd) or v1 "
              "(every score; docs/trace-format.md).")
@click.option("--scores", "top_n", default="2k", show_default=True, metavar="2k|N|all",
              help="v2: router scores kept per token-layer: the top 2·k, the top N (> k), or "
                   "all. Expanded Drop and MACS rank a token's local experts only among kept "
                   "scores (docs/trace-format.md says what they lose).")
@click.option("--compress/--no-compress", default=False, show_default=True,
              help="v1 only: zlib-compress each step (v2 always compresses, with zstd).")
@click.option("--list-scenarios", is_flag=True,
              help="List the bundled scenarios and exit.")
def command(model: str, scenario: str, steps: int, seed: int, out: str | None,
            force: bool, batch_size: int | None, decode_steps: int | None, trace_format: str,
            top_n: str, compress: bool, list_scenarios: bool) -> None:
    """Write a synthetic routing trace: realistic expert choices, router scores and
    feature entropies for a scenario's traffic, without a GPU or model weights.

    \b
    Steps: a prefill step holds every prompt token of one batch of requests, then each
    decode step one text token per request; then a new batch begins. The routing model
    and its calibration (expert popularity, modality groups, redundant visual tokens,
    router sharpness) are described in docs/synthetic.md.

    \b
    Example:
      macssim synth --model qwen3-vl-30b-a3b --scenario docvqa --steps 64 --seed 0 \\
          --out docvqa.mtrace
    """
    from tqdm import tqdm

    from macssim.trace import (
        check_trace_target,
        estimate_trace_bytes,
        get_model_preset,
        get_scenario,
        synthesize,
    )

    try:
        if list_scenarios:
            _print_scenarios()
            return
        facts = get_model_preset(model)
        spec = get_scenario(scenario)
        try:
            spec = spec.with_overrides(batch_size=batch_size, decode_steps=decode_steps)
        except MacssimError as e:  # the batch makes a prefill step too large
            raise click.BadParameter(str(e), param_hint="--batch-size") from e
        # A scenario's name is free text: keep the default file name a plain one, here.
        path = out or f"{re.sub(r'[^A-Za-z0-9_.-]', '_', spec.name)[:100]}-seed{seed}.mtrace"
        check_trace_target(path, replace=force)
        version = 2 if trace_format == "v2" else 1
        scores = _top_n(top_n, facts.top_k, facts.num_experts)
        if version == 1 and top_n != "2k":
            raise click.BadParameter("format v1 keeps every score; --scores is for v2",
                                     param_hint="--scores")
        if version == 2 and compress:
            click.echo("note: --compress only matters for v1; v2 always compresses (zstd)",
                       err=True)
            compress = False
        tokens, size = estimate_trace_bytes(facts, spec, steps, format_version=version,
                                            top_n=scores, compress=compress)
        click.echo(f"writing {path}: about {tokens:,.0f} tokens, about "
                   f"{_human_bytes(int(size))} (format {trace_format}"
                   + (f", scores top {scores}" if version == 2 else "") + ")", err=True)
        with tqdm(total=steps, unit="step", desc="synth", leave=False) as bar:
            summary = synthesize(path, model=facts, scenario=spec, num_steps=steps,
                                 seed=seed, compress=compress, format_version=version,
                                 top_n=scores, on_step=lambda step: bar.update(1),
                                 replace=force)
    except MacssimError as e:
        raise click.ClickException(str(e)) from e
    _print_summary(summary)
