"""``macssim capture``: routing from a real model (or a tiny one, or a serving engine's
export) into a trace. Thin: parse, call one library function, print a short table."""

from __future__ import annotations

import shlex
import sys

import click

from macssim._errors import MacssimError
from macssim._validate import Limits

__all__ = ["command"]


def _list_families() -> None:
    from macssim.capture import list_families

    click.echo(f"{'family':<14} {'kind':<6} {'scores':<8} what")
    for fam in list_families():
        kind = "vision" if fam.vision else "text"
        click.echo(f"{fam.name:<14} {kind:<6} {fam.score_function:<8} {fam.title}")


def _table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"  {key:<{width}}  {value}")


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """The name only (no torch import); whether torch sees that GPU is checked on use."""
    from macssim.capture._load import device_problem

    problem = device_problem(value)
    if problem:
        raise click.BadParameter(problem, ctx=ctx, param=param)
    return value


def _capture(kwargs: dict) -> None:
    from macssim.capture import CaptureSettings, capture_trace

    version = 2 if kwargs["trace_format"] == "v2" else 1
    top_n = kwargs["scores"]
    if top_n not in ("2k", "all"):
        try:
            top_n = int(top_n)
        except ValueError:
            raise click.BadParameter(f"expected 2k, all or an integer, got {top_n!r}",
                                     param_hint="--scores") from None
    if version == 1 and kwargs["scores"] != "2k":
        raise click.BadParameter("format v1 keeps every score; --scores is for v2",
                                 param_hint="--scores")
    settings = CaptureSettings(batch_size=kwargs["batch_size"], max_tokens=kwargs["max_tokens"],
                               decode_steps=kwargs["decode_steps"], seed=kwargs["seed"],
                               compress=kwargs["compress"] and version == 1,
                               format_version=version, top_n=top_n, sample=kwargs["sample"],
                               max_steps=kwargs["steps"])

    def estimate(tokens: int, size: float) -> None:
        click.echo(f"writing {kwargs['out']}: about {tokens:,} tokens, about "
                   f"{size / 1e6:,.1f} MB (format {kwargs['trace_format']})", err=True)

    result = capture_trace(kwargs["out"], model=kwargs["model"], tiny=kwargs["tiny"],
                           inputs=kwargs["inputs"], settings=settings,
                           revision=kwargs["revision"], device=kwargs["device"],
                           dtype=kwargs["dtype"], progress=kwargs["progress"],
                           command=shlex.join(["macssim", *sys.argv[1:]]),
                           replace=kwargs["force"], on_estimate=estimate)
    modal = ", ".join(f"{k} {v}" for k, v in sorted(result.tokens_by_modality.items()))
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(result.tokens_by_kind.items()))
    _table([("model", f"{result.model} ({result.family}) on {result.device}"),
            ("requests", f"{result.num_requests} in {result.num_batches} batches"),
            ("steps", str(result.num_steps)), ("tokens", kinds), ("modality", modal),
            ("time", f"{result.elapsed_s:.1f} s")])
    click.echo(f"wrote {result.path}")


def _import(kwargs: dict) -> None:
    from macssim.capture import facts_for, import_sglang, import_vllm

    if not kwargs["facts"]:
        raise click.UsageError("--facts is required with --import-vllm / --import-sglang: a "
                               "model preset name or the model's config.json")
    facts = facts_for(kwargs["facts"])
    ids = {"image_token_id": kwargs["image_token_id"], "video_token_id": kwargs["video_token_id"]}
    if kwargs["import_vllm"]:
        result = import_vllm(kwargs["import_vllm"], kwargs["out"], facts,
                             batch_size=kwargs["batch_size"], replace=kwargs["force"], **ids)
    else:
        result = import_sglang(kwargs["import_sglang"], kwargs["out"], facts,
                               rank=kwargs["rank"], replace=kwargs["force"], **ids)
    _table([("source", result.source), ("model facts", facts.name),
            ("requests", "not recorded" if result.num_requests is None
             else str(result.num_requests)),
            ("steps", str(result.num_steps)), ("tokens", str(result.num_tokens)),
            ("fields", "ids only (no scores, weights or entropy)")])
    click.echo(f"wrote {result.path}")


@click.command("capture")
@click.option("--model", "model", metavar="ID_OR_DIR",
              help="Hugging Face hub id or local checkpoint directory to load with "
                   "transformers (bfloat16 on a GPU, float32 on CPU).")
@click.option("--tiny", metavar="FAMILY",
              help="Build a tiny random model of FAMILY's real transformers class (no "
                   "download) and capture from it: the offline demo.")
@click.option("--list-families", is_flag=True, help="List the supported model families.")
@click.option("--import-vllm", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Convert vLLM's returned routed experts (.npy/.npz/.json/.jsonl) instead "
                   "of running a model; needs --facts.")
@click.option("--import-sglang", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Convert an SGLang per-token expert-distribution dump (JSON, see "
                   "docs/capture.md) instead of running a model; needs --facts.")
@click.option("--facts", metavar="PRESET_OR_CONFIG",
              help="For imports: a model preset (e.g. qwen3-vl-30b-a3b) or the model's "
                   "config.json, giving layers, experts and top-k.")
@click.option("--inputs", type=click.Path(exists=True, dir_okay=False), metavar="FILE.jsonl",
              help="Requests to run, one JSON object per line: {\"prompt\", \"image\" | "
                   "\"images\" | \"video\" (frame files)}. Default: the built-in set (document, "
                   "chart, photo, video frames, text-only).")
@click.option("--out", "-o", default="capture.mtrace", show_default=True,
              type=click.Path(dir_okay=False), help="Trace file to write. An existing file "
              "is never overwritten, except an earlier trace with --force.")
@click.option("--format", "trace_format", type=click.Choice(["v2", "v1"]), default="v2",
              show_default=True, help="Trace format: v2 (compact: top-N scores, zstd) or v1 "
              "(every score).")
@click.option("--scores", default="2k", show_default=True, metavar="2k|N|all",
              help="v2: router scores kept per token-layer (top 2·k, top N > k, or all).")
@click.option("--steps", type=click.IntRange(1, Limits.MAX_STEPS), default=None,
              help="Keep the first N steps only (the batches they need are run, no more).")
@click.option("--sample", type=click.IntRange(1, Limits.MAX_STEPS), default=1,
              show_default=True, help="Run every K-th batch of the inputs only: a 1/K slice "
              "of a long input set.")
@click.option("--force", is_flag=True, help="Replace an earlier macssim trace at --out.")
@click.option("--batch-size", default=4, show_default=True,
              type=click.IntRange(1, Limits.MAX_BATCH),
              help="Requests per forward batch, at most (imports: requests per rebuilt batch).")
@click.option("--max-tokens", default=16384, show_default=True,
              type=click.IntRange(1, Limits.MAX_TOKENS_PER_STEP),
              help="Padded tokens per batch (requests x longest prompt), at most.")
@click.option("--decode-steps", default=0, show_default=True,
              type=click.IntRange(0, Limits.MAX_STEPS),
              help="Decode forward calls after the prefill; each becomes one step with one "
                   "token per live sequence.")
@click.option("--revision", help="Hub revision (branch, tag or commit) of --model.")
@click.option("--device", default="auto", show_default=True, callback=_check_device,
              help="auto (GPU if present), cpu, cuda or cuda:N.")
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
              help="With --model: auto (bfloat16 on GPU, float32 on CPU), bfloat16, float16 "
              "or float32. Tiny models run in float32.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, Limits.MAX_SEED),
              help="Seed for torch and the built-in images (decoding is greedy).")
@click.option("--compress/--no-compress", default=False, show_default=True,
              help="v1 only: zlib-compress each step (v2 always compresses, with zstd).")
@click.option("--image-token-id", type=click.IntRange(0, Limits.MAX_HIDDEN),
              help="For imports: token id of image placeholders.")
@click.option("--video-token-id", type=click.IntRange(0, Limits.MAX_HIDDEN),
              help="For imports: token id of video placeholders.")
@click.option("--rank", type=click.IntRange(0, Limits.MAX_GPUS - 1),
              help="For --import-sglang: the rank whose records to take (default: lowest).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar over the inputs.")
def command(**kwargs) -> None:
    """Capture MoE routing from a transformers model into a trace.

    \b
    Examples:
      macssim capture --tiny qwen3-vl-moe --out tiny.mtrace
      macssim capture --model Qwen/Qwen3-VL-30B-A3B-Instruct --decode-steps 16 -o qwen.mtrace
      macssim capture --model ./ckpt --inputs prompts.jsonl --batch-size 8
      macssim capture --import-vllm routed.npz --facts qwen3-vl-30b-a3b -o vllm.mtrace
      macssim capture --list-families

    Needs transformers >= 5.23 for --model/--tiny: pip install -e ".[capture]".
    """
    if kwargs["list_families"]:
        _list_families()
        return
    sources = [k for k in ("model", "tiny", "import_vllm", "import_sglang") if kwargs[k]]
    if len(sources) != 1:
        raise click.UsageError("give exactly one of --model, --tiny, --import-vllm, "
                               "--import-sglang (or --list-families)")
    if kwargs["tiny"] and kwargs["dtype"] != "auto":
        raise click.UsageError("--dtype applies to --model; tiny models run in float32")
    try:
        from macssim.trace import check_trace_target

        check_trace_target(kwargs["out"], replace=kwargs["force"])  # before loading a model
        if sources[0] in ("import_vllm", "import_sglang"):
            _import(kwargs)
        else:
            _capture(kwargs)
    except MacssimError as e:
        raise click.ClickException(str(e)) from e
