"""The serving scheduler: requests arrive, wait in their data-parallel rank's queue, and
are batched step by step as vLLM's and SGLang's schedulers batch them.

The picture: G data-parallel attention ranks (one per GPU) serve requests; the MoE layers
are expert-parallel over all of them, so every rank runs every step together (a rank with
nothing to do still joins the all-to-alls, as DP attention does with an idle batch). Each
rank keeps its own queue. On arrival a request goes to the least loaded rank (fewest
tokens still to compute: prompt tokens not yet prefilled plus output tokens not yet
generated, over the requests it holds; ties to the lowest rank) and stays there: its KV
cache lives on that rank.

Each step, each rank fills a token budget the way vLLM's v1 scheduler does:

1. running requests first, in admission order: a request whose prompt is fully prefilled
   decodes one token; one still prefilling gets the next chunk of its prompt, as much as
   the budget has left (chunked prefill);
2. then waiting requests, first come first served, while the budget has tokens left, the
   rank runs fewer than ``max_seqs`` requests and (when bounded) its KV cache has room for
   the request's whole sequence: each is admitted with a first chunk of its prompt
   (without chunked prefill, only if its whole prompt fits).

The step's duration comes from ``step_time`` (the cluster simulation, or a stub in
tests). When it ends, a request whose last prompt chunk ran has its first output token
(TTFT); each decode adds one token; a request with all its output tokens leaves.
Requests arriving during a step wait for the next one.

Why a plain loop and not SimPy processes: there is one engine stepping synchronously and
two kinds of events (an arrival, a step's end), and every decision happens at a step's
start; the loop reads as the sentence above and is a pure function of its inputs.
A rank's KV cache, when bounded (``kv_cache_tokens``), admits a request only when its
whole sequence fits beside those already admitted. Not modelled: preemption, prefix
caching, speculative decoding, detokenisation and network time to the client.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from macssim._errors import MacssimError
from macssim._validate import check_int

__all__ = ["Chunk", "RequestSpec", "RequestTiming", "Schedule", "SchedulerConfig",
           "ServeError", "StepBatch", "StepCost", "StepRecord", "run_scheduler"]


class ServeError(MacssimError):
    """A serving run was asked for something it cannot do (no requests, a rate <= 0,
    a malformed arrivals file, a step time that is not a positive number)."""


@dataclass(frozen=True)
class SchedulerConfig:
    """The scheduler's knobs, in vLLM's words where vLLM has one."""

    token_budget: int = 8192
    """Tokens one rank may run in one step (vLLM ``max_num_batched_tokens``; SGLang
    ``chunked_prefill_size``). vLLM's default with chunked prefill is 8192 on large GPUs."""
    max_seqs: int = 256
    """Requests one rank runs at once (vLLM ``max_num_seqs``, default 256)."""
    chunked_prefill: bool = True
    """Split a prompt over steps when it does not fit the budget left; off: a prompt is
    admitted only when it fits whole (and a prompt longer than the budget is refused)."""
    kv_cache_tokens: int | None = None
    """Tokens of KV cache one rank holds (None: unbounded). A request is admitted only
    when its whole sequence (prompt + output tokens) fits beside the sequences already
    admitted on its rank, and frees its share when it finishes: admission control with
    the full reservation, never a preemption (vLLM allocates as it goes and preempts
    instead; docs/serve.md says what that changes)."""

    def __post_init__(self) -> None:
        check_int(self.token_budget, "scheduler", "token_budget", low=1, high=1 << 20,
                  error=ServeError)
        check_int(self.max_seqs, "scheduler", "max_seqs", low=1, high=1 << 20, error=ServeError)
        if self.kv_cache_tokens is not None:
            check_int(self.kv_cache_tokens, "scheduler", "kv_cache_tokens", low=1,
                      high=1 << 40, error=ServeError)
        if not isinstance(self.chunked_prefill, bool):
            raise ServeError(f'scheduler: "chunked_prefill" must be true or false, got '
                             f"{self.chunked_prefill!r}")


@dataclass(frozen=True)
class RequestSpec:
    """One served request as the scheduler sees it."""

    arrival_s: float
    prompt_tokens: int
    """Prefill tokens (P >= 1)."""
    output_tokens: int
    """Tokens generated (O >= 1): the first by the step that ends the prefill, the rest by
    O − 1 decode steps."""


@dataclass(frozen=True)
class Chunk:
    """Consecutive tokens of one request in one step."""

    request: int
    """Index of the request in the scheduler's input."""
    rank: int
    kind: str
    """``prefill`` (prompt tokens) or ``decode`` (one token)."""
    first: int
    """Position of the first token in its request: a prefill chunk's prompt offset; a
    decode token's position, P + (tokens generated so far) − 1."""
    count: int


@dataclass(frozen=True)
class StepBatch:
    """What every rank runs in one step."""

    index: int
    num_ranks: int
    chunks: tuple[Chunk, ...]

    @property
    def num_tokens(self) -> int:
        return sum(c.count for c in self.chunks)

    @property
    def prefill_tokens(self) -> int:
        return sum(c.count for c in self.chunks if c.kind == "prefill")

    @property
    def decode_tokens(self) -> int:
        return sum(c.count for c in self.chunks if c.kind == "decode")

    def rank_tokens(self) -> np.ndarray:
        """[num_ranks] int64 tokens each rank runs."""
        out = np.zeros(self.num_ranks, dtype=np.int64)
        for c in self.chunks:
            out[c.rank] += c.count
        return out


@dataclass(frozen=True)
class StepCost:
    """What a step cost, as ``step_time`` answers it."""

    duration_s: float
    gpu_busy_s: tuple[float, ...] | None = None
    """Time each GPU spent computing in the step; None: every GPU the whole step (a stub
    step time knows no better)."""
    moe_latency_s: float = 0.0
    """Sum over the step's MoE layers of ``moe_latency_s``."""
    straggler_delay_s: float = 0.0
    """Sum over the step's MoE layers of ``straggler_delay_s``."""


@dataclass(frozen=True)
class StepRecord:
    """One step as it ran."""

    step: int
    start_s: float
    duration_s: float
    tokens: int
    prefill_tokens: int
    decode_tokens: int
    running: int
    """Requests holding a batch slot during the step, over all ranks."""
    waiting: int
    """Requests that had arrived by the step's start and were still queued after it was
    formed (the queue length)."""
    cost: StepCost = field(repr=False)


@dataclass(frozen=True)
class RequestTiming:
    """When one request arrived, where it ran, and when its tokens came out."""

    request: int
    rank: int
    arrival_s: float
    scheduled_s: float
    """Start of the first step that ran any of its tokens."""
    first_token_s: float
    finish_s: float
    prompt_tokens: int
    output_tokens: int

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first; NaN for a single output token."""
        if self.output_tokens <= 1:
            return math.nan
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)

    @property
    def e2e_latency_s(self) -> float:
        return self.finish_s - self.arrival_s


@dataclass(frozen=True)
class Schedule:
    """Everything a scheduler run produced."""

    requests: tuple[RequestTiming, ...]
    steps: tuple[StepRecord, ...]
    num_ranks: int


StepTime = Callable[[StepBatch], "StepCost | float"]
"""Answers how long a step takes: the cluster simulation, or a stub in tests (a float is
read as ``StepCost(duration_s=value)``)."""


@dataclass
class _Live:
    spec: RequestSpec
    rank: int
    prefilled: int = 0
    generated: int = 0
    scheduled_s: float = math.nan
    first_token_s: float = math.nan
    finish_s: float = math.nan

    def remaining(self) -> int:
        return (self.spec.prompt_tokens - self.prefilled) + (self.spec.output_tokens
                                                             - self.generated)


def _check_requests(requests: Sequence[RequestSpec], config: SchedulerConfig) -> None:
    if not requests:
        raise ServeError("no requests to serve")
    for i, r in enumerate(requests):
        where = f"request {i}"
        if not (isinstance(r.arrival_s, int | float) and math.isfinite(r.arrival_s)
                and r.arrival_s >= 0):
            raise ServeError(f'{where}: "arrival_s" must be a finite number >= 0, got '
                             f"{r.arrival_s!r}")
        check_int(r.prompt_tokens, where, "prompt_tokens", low=1, high=1 << 24, error=ServeError)
        check_int(r.output_tokens, where, "output_tokens", low=1, high=1 << 24, error=ServeError)
        if not config.chunked_prefill and r.prompt_tokens > config.token_budget:
            raise ServeError(f"{where}: prompt of {r.prompt_tokens} tokens exceeds the token "
                             f"budget {config.token_budget} and chunked prefill is off")
        if (config.kv_cache_tokens is not None
                and r.prompt_tokens + r.output_tokens > config.kv_cache_tokens):
            raise ServeError(f"{where}: its {r.prompt_tokens + r.output_tokens} tokens (prompt "
                             f"+ output) exceed a rank's KV cache of {config.kv_cache_tokens} "
                             "tokens: it could never be admitted")


def _as_cost(value: StepCost | float, index: int) -> StepCost:
    cost = value if isinstance(value, StepCost) else StepCost(duration_s=float(value))
    if not (math.isfinite(cost.duration_s) and cost.duration_s > 0):
        raise ServeError(f"step {index}: step time must be a finite number > 0 s, got "
                         f"{cost.duration_s!r}")
    return cost


def run_scheduler(requests: Sequence[RequestSpec], num_ranks: int, step_time: StepTime,
                  config: SchedulerConfig | None = None) -> Schedule:
    """Serve ``requests`` on ``num_ranks`` data-parallel ranks, step by step.

    Args:
        requests: in any order; ties in arrival time keep their order here.
        num_ranks: data-parallel attention ranks (the topology's GPUs).
        step_time: ``step_time(batch)`` -> ``StepCost`` or seconds; called once per step.
        config: the scheduler's knobs.

    Returns:
        Per-request timings (in the input's order) and per-step records.
    """
    config = config or SchedulerConfig()
    check_int(num_ranks, "scheduler", "num_ranks", low=1, high=1 << 16, error=ServeError)
    _check_requests(requests, config)
    order = sorted(range(len(requests)), key=lambda i: (requests[i].arrival_s, i))
    pending = deque(order)
    live: list[_Live | None] = [None] * len(requests)
    waiting: list[deque[int]] = [deque() for _ in range(num_ranks)]
    running: list[list[int]] = [[] for _ in range(num_ranks)]
    load = [0] * num_ranks
    kv_used = [0] * num_ranks
    steps: list[StepRecord] = []
    now = 0.0
    done = 0
    while done < len(requests):
        while pending and requests[pending[0]].arrival_s <= now:
            i = pending.popleft()
            rank = min(range(num_ranks), key=lambda g: (load[g], g))
            live[i] = _Live(requests[i], rank)
            load[rank] += live[i].remaining()
            waiting[rank].append(i)
        chunks = _form_batch(live, waiting, running, config, num_ranks, kv_used)
        if not chunks:
            now = max(now, requests[pending[0]].arrival_s)   # idle until the next arrival
            continue
        batch = StepBatch(index=len(steps), num_ranks=num_ranks, chunks=tuple(chunks))
        cost = _as_cost(step_time(batch), batch.index)
        steps.append(StepRecord(
            step=batch.index, start_s=now, duration_s=cost.duration_s,
            tokens=batch.num_tokens, prefill_tokens=batch.prefill_tokens,
            decode_tokens=batch.decode_tokens, running=sum(map(len, running)),
            waiting=sum(map(len, waiting)), cost=cost))
        start, now = now, now + cost.duration_s
        for c in chunks:
            r = live[c.request]
            if math.isnan(r.scheduled_s):
                r.scheduled_s = start
            if c.kind == "prefill":
                r.prefilled += c.count
                if r.prefilled == r.spec.prompt_tokens:
                    r.generated = 1
                    r.first_token_s = now
            else:
                r.generated += 1
            load[c.rank] -= c.count + (1 if c.kind == "prefill"
                                       and r.prefilled == r.spec.prompt_tokens else 0)
            if r.generated == r.spec.output_tokens:
                r.finish_s = now
                running[c.rank].remove(c.request)
                kv_used[c.rank] -= r.spec.prompt_tokens + r.spec.output_tokens
                done += 1
    timings = tuple(
        RequestTiming(request=i, rank=r.rank, arrival_s=r.spec.arrival_s,
                      scheduled_s=r.scheduled_s, first_token_s=r.first_token_s,
                      finish_s=r.finish_s, prompt_tokens=r.spec.prompt_tokens,
                      output_tokens=r.spec.output_tokens)
        for i, r in enumerate(live))
    return Schedule(requests=timings, steps=tuple(steps), num_ranks=num_ranks)


def _form_batch(live: list[_Live | None], waiting: list[deque[int]], running: list[list[int]],
                config: SchedulerConfig, num_ranks: int, kv_used: list[int]) -> list[Chunk]:
    """Every rank's share of the next step (running first, then admissions); moves the
    admitted requests from ``waiting`` to ``running`` and reserves their KV cache."""
    chunks: list[Chunk] = []
    for rank in range(num_ranks):
        budget = config.token_budget
        for i in running[rank]:
            if budget == 0:
                break
            r = live[i]
            if r.prefilled < r.spec.prompt_tokens:
                n = min(r.spec.prompt_tokens - r.prefilled, budget)
                chunks.append(Chunk(i, rank, "prefill", r.prefilled, n))
            else:
                n = 1
                chunks.append(Chunk(i, rank, "decode", r.spec.prompt_tokens + r.generated - 1, 1))
            budget -= n
        queue = waiting[rank]
        while queue and budget > 0 and len(running[rank]) < config.max_seqs:
            r = live[queue[0]]
            if not config.chunked_prefill and r.spec.prompt_tokens > budget:
                break
            need = r.spec.prompt_tokens + r.spec.output_tokens
            if config.kv_cache_tokens is not None and kv_used[rank] + need > config.kv_cache_tokens:
                break   # first come, first served: the head waits for room
            kv_used[rank] += need
            i = queue.popleft()
            n = min(r.spec.prompt_tokens, budget)
            chunks.append(Chunk(i, rank, "prefill", 0, n))
            running[rank].append(i)
            budget -= n
    return chunks
