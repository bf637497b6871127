"""``capture_trace``: run a model on a prompt set under the routing hooks, write a trace.

One library call behind ``macssim capture --model X`` and ``--tiny FAMILY``: load (or
build) the model and its processor, turn the prompts into left-padded batches within a
token budget, run ``generate`` (prefill, then ``decode_steps`` decode calls) on each batch,
and stream every forward call's step into a format-v1 trace. The trace is written to a
temporary name and renamed at the end, so an interrupted capture leaves nothing under the
final name.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from macssim._errors import CaptureError
from macssim.capture._families import get_family
from macssim.capture._hooks import RoutingRecorder
from macssim.capture._inputs import (
    encode,
    plan_batches,
    prompt_tokens,
    tiny_requests,
    video_mode,
)
from macssim.capture._load import LoadedModel
from macssim.capture._prompts import Prompt, builtin_prompts, load_inputs
from macssim.trace import MODALITIES, Step, TraceWriter, bytes_per_token_layer

__all__ = ["CaptureResult", "CaptureSettings", "capture_trace"]


@dataclass(frozen=True)
class CaptureSettings:
    """How to run the model; recorded in the trace's provenance."""

    batch_size: int = 4
    """Requests per forward batch (at most)."""
    max_tokens: int = 16384
    """Padded tokens per batch (rows x longest request) at most; bounds memory."""
    decode_steps: int = 0
    """Decode forward calls after the prefill (0: prefill only)."""
    seed: int = 0
    """Seeds torch and the built-in images; decoding is greedy."""
    compress: bool = False
    """Format v1 only: zlib-compress each step record (v2 always compresses, zstd)."""
    format_version: int = 2
    """Trace format: 2 (top-N scores, zstd) or 1 (every score)."""
    top_n: int | str = "2k"
    """v2: router scores kept per token-layer: ``"2k"``, an integer N > k, or ``"all"``."""
    sample: int = 1
    """Run every ``sample``-th batch of the inputs only: a 1/sample slice of a long set."""
    max_steps: int | None = None
    """Write at most this many steps; the batches they need are run, no more."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_tokens", "sample"):
            if getattr(self, name) < 1:
                raise CaptureError(f'"{name}" must be >= 1, got {getattr(self, name)}')
        if self.decode_steps < 0:
            raise CaptureError(f'"decode_steps" must be >= 0, got {self.decode_steps}')
        if self.max_steps is not None and self.max_steps < 1:
            raise CaptureError(f'"max_steps" must be >= 1, got {self.max_steps}')
        if self.format_version not in (1, 2):
            raise CaptureError(f'"format_version" must be 1 or 2, got {self.format_version}')


@dataclass(frozen=True)
class CaptureResult:
    """What a capture wrote, for the command's summary table."""

    path: Path
    model: str
    family: str
    device: str
    num_requests: int
    num_batches: int
    num_steps: int
    tokens_by_kind: dict[str, int] = field(default_factory=dict)
    tokens_by_modality: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0


@dataclass
class _Session(LoadedModel):
    """A loaded (or tiny) model and what this capture decided about it."""

    tiny: bool = False
    video_mode: str = "frames-as-images"


def _open_session(model: str | None, tiny: str | None, *, revision: str | None,
                  device: str | None, dtype: str | None, seed: int) -> _Session:
    from macssim.capture._load import load_model, pick_device

    if (model is None) == (tiny is None):
        raise CaptureError("give exactly one of a model (hub id or checkpoint directory) or "
                           "a tiny family")
    if model is not None:
        loaded = load_model(model, revision=revision, device=device, dtype=dtype)
        return _Session(**vars(loaded), tiny=False)
    from macssim.capture._tiny import build_tiny_model
    from macssim.capture._tiny_processor import TINY_PROCESSOR_FAMILIES, build_tiny_processor

    family = get_family(tiny)
    where = pick_device(device if device not in (None, "auto") else "cpu")  # fails fast
    built = build_tiny_model(family, seed=seed)
    built.to(where)
    processor = (build_tiny_processor(family.name)
                 if family.name in TINY_PROCESSOR_FAMILIES else None)
    return _Session(built, processor, family, f"tiny-{family.name}", None, where, tiny=True)


def _batch_inputs(session: _Session, prompts: Sequence[Prompt], seed: int) -> dict[str, Any]:
    if session.processor is not None:
        dtype = next(session.model.parameters()).dtype
        return encode(session.processor, session.family, prompts, device=session.device,
                      dtype=dtype, video=session.video_mode == "video")
    from macssim.capture._tiny import tiny_batch

    inputs = tiny_batch(session.family, session.model.config,
                        tiny_requests(session.family, prompts), seed=seed)
    return {k: v.to(session.device) for k, v in inputs.items()}


def _lengths(session: _Session, prompts: Sequence[Prompt], seed: int) -> list[int]:
    if session.processor is not None:
        video = session.video_mode == "video"
        return [prompt_tokens(session.processor, session.family, p, video=video)
                for p in prompts]
    return [int(_batch_inputs(session, [p], seed)["attention_mask"].sum()) for p in prompts]


def _provenance(session: _Session, settings: CaptureSettings, prompts: Sequence[Prompt],
                lengths: Sequence[int], batches: list[list[int]],
                command: str | None) -> dict[str, Any]:
    import torch
    import transformers

    from macssim import __version__

    return {
        "source": "capture",
        "tool": f"macssim {__version__}",
        "command": command,
        "model": session.model_id,
        "revision": session.revision,
        "family": session.family.name,
        "tiny": session.tiny,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "device": session.device,
        "dtype": str(next(session.model.parameters()).dtype).replace("torch.", ""),
        "settings": asdict(settings),
        "processor": type(session.processor).__name__ if session.processor else
        "synthetic tiny inputs (_tiny.tiny_batch)",
        "video_input": session.video_mode,
        "inputs": [dict(p.describe(), request_id=i, prompt_tokens=int(n))
                   for i, (p, n) in enumerate(zip(prompts, lengths, strict=True))],
        "batches": batches,
    }


def _generate(session: _Session, inputs: dict[str, Any], settings: CaptureSettings,
              where: str) -> None:
    import torch

    try:
        with torch.no_grad():
            session.model.generate(**inputs, max_new_tokens=settings.decode_steps + 1,
                                   do_sample=False, num_beams=1)
    except torch.OutOfMemoryError as e:
        raise CaptureError(f"out of memory on {session.device} in {where}: try a smaller "
                           f"--batch-size (now {settings.batch_size}) or --max-tokens (now "
                           f"{settings.max_tokens})") from e


def capture_trace(out: str | os.PathLike, *, model: str | None = None, tiny: str | None = None,
                  inputs: str | os.PathLike | Sequence[Prompt] | None = None,
                  settings: CaptureSettings | None = None, revision: str | None = None,
                  device: str | None = None, dtype: str | None = None,
                  progress: bool = False, command: str | None = None,
                  replace: bool = False,
                  on_estimate: Callable[[int, float], None] | None = None) -> CaptureResult:
    """Capture routing from ``model`` (hub id or checkpoint directory) or a ``tiny`` family
    model on ``inputs`` (a JSONL path, a list of prompts, or None for the built-in set)
    and write it to ``out`` (format per ``settings``; an earlier macssim trace there is
    replaced only with ``replace``; any other file never). ``on_estimate(tokens, bytes)``
    is told the expected size once the model is loaded, before anything runs."""
    import torch

    settings = settings or CaptureSettings()
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    session = _open_session(model, tiny, revision=revision, device=device, dtype=dtype,
                            seed=settings.seed)
    if inputs is None:  # text-only models run the text prompts of the set
        prompts = [p for p in builtin_prompts(settings.seed)
                   if session.family.vision or not (p.images or p.video)]
    elif isinstance(inputs, str | os.PathLike):
        prompts = load_inputs(inputs)
    else:
        prompts = list(inputs)
    if session.processor is not None:
        session.video_mode = video_mode(session.processor, session.family, prompts)
    lengths = _lengths(session, prompts, settings.seed)
    batches = plan_batches(lengths, batch_size=settings.batch_size,
                           max_tokens=settings.max_tokens)[::settings.sample]
    if settings.max_steps is not None:    # each batch writes a prefill and its decode steps
        batches = batches[:-(-settings.max_steps // (1 + settings.decode_steps))]
    prompts_run = sum(len(b) for b in batches)
    recorder = RoutingRecorder(session.model, session.family, name=session.model_id,
                               source=f"config.json of {session.model_id}")
    provenance = _provenance(session, settings, prompts, lengths, batches, command)
    kinds: Counter[str] = Counter()
    modalities: Counter[str] = Counter()

    if on_estimate is not None:
        facts = recorder.facts
        steps = [(sum(lengths[i] for i in b), len(b)) for b in batches]
        tokens = sum(p + settings.decode_steps * n for p, n in steps)
        if settings.max_steps is not None:
            tokens = min(tokens, _tokens_in_first(steps, settings.decode_steps,
                                                  settings.max_steps))
        on_estimate(tokens, tokens * facts.num_moe_layers * bytes_per_token_layer(
            facts.num_experts, facts.top_k, format_version=settings.format_version,
            top_n=settings.top_n, compress=settings.compress))
    with TraceWriter(out, recorder.facts, provenance, compress=settings.compress,
                     replace=replace, format_version=settings.format_version,
                     top_n=settings.top_n if settings.format_version >= 2 else None) as writer:
        def on_step(step: Step) -> None:
            if settings.max_steps is not None and writer.num_steps >= settings.max_steps:
                return
            writer.write(step)
            kinds[step.kind] += step.num_tokens
            for code, count in zip(*_counts(step.modality), strict=True):
                modalities[MODALITIES[code]] += count

        recorder.on_step = on_step
        bar = _progress(prompts_run, progress)
        recorder.attach()
        try:
            for number, batch in enumerate(batches):
                chosen = [prompts[i] for i in batch]
                batch_inputs = _batch_inputs(session, chosen, settings.seed + number)
                recorder.begin_batch(batch)
                where = f"batch {number} ({len(batch)} requests, " \
                        f"{int(batch_inputs['input_ids'].numel())} padded tokens)"
                _generate(session, batch_inputs, settings, where)
                bar.update(len(batch))
        finally:
            recorder.detach()
            bar.close()
        num_steps = writer.num_steps
    return CaptureResult(Path(out), session.model_id, session.family.name, session.device,
                         prompts_run, len(batches), num_steps, dict(kinds), dict(modalities),
                         time.perf_counter() - started)


def _tokens_in_first(batches: list[tuple[int, int]], decode_steps: int, steps: int) -> int:
    """Tokens of the first ``steps`` steps, batches given as (prompt tokens, requests)."""
    tokens = 0
    for prompt, requests in batches:
        if steps <= 0:
            break
        tokens += prompt
        take = min(decode_steps, steps - 1)
        tokens += take * requests
        steps -= 1 + take
    return tokens


def _counts(modality: Any) -> tuple[list[int], list[int]]:
    import numpy as np

    codes, counts = np.unique(modality, return_counts=True)
    return [int(c) for c in codes], [int(n) for n in counts]


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="input", desc="capture", disable=not enabled, leave=False)
