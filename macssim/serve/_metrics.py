"""Serving metrics of a schedule: per request (TTFT, TPOT, end-to-end latency) and per
run (throughput, goodput under an SLA, GPU utilisation, straggler share). Names and
definitions are those of ``macssim.cluster.metrics.METRICS`` (and ``docs/metrics.md``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from macssim.serve._scheduler import Schedule, ServeError

__all__ = ["Sla", "request_table", "run_summary", "step_table"]

_PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Sla:
    """A service-level objective a request meets or misses."""

    ttft_s: float = 2.0
    """Time to first token at most this (s)."""
    tpot_s: float = 0.030
    """Time per output token after the first at most this (s); a request with one output
    token has no TPOT and meets this part."""

    def __post_init__(self) -> None:
        for name in ("ttft_s", "tpot_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not (v > 0):
                raise ServeError(f'SLA "{name}" must be a number > 0 (seconds), got {v!r}')


def request_table(schedule: Schedule, sla: Sla) -> pd.DataFrame:
    """One row per request (``requests.csv``)."""
    rows = []
    for r in schedule.requests:
        rows.append({
            "request": r.request, "rank": r.rank, "arrival_s": r.arrival_s,
            "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens,
            "queue_s": r.scheduled_s - r.arrival_s, "ttft_s": r.ttft_s, "tpot_s": r.tpot_s,
            "e2e_latency_s": r.e2e_latency_s, "meets_sla": _meets(r.ttft_s, r.tpot_s, sla),
        })
    return pd.DataFrame(rows)


def _meets(ttft_s: float, tpot_s: float, sla: Sla) -> bool:
    return ttft_s <= sla.ttft_s and (math.isnan(tpot_s) or tpot_s <= sla.tpot_s)


def step_table(schedule: Schedule) -> pd.DataFrame:
    """One row per served step (``steps.csv``)."""
    return pd.DataFrame([{
        "step": s.step, "start_s": s.start_s, "step_latency_s": s.duration_s,
        "tokens": s.tokens, "prefill_tokens": s.prefill_tokens,
        "decode_tokens": s.decode_tokens, "running": s.running, "waiting": s.waiting,
        "moe_latency_s": s.cost.moe_latency_s, "straggler_delay_s": s.cost.straggler_delay_s,
    } for s in schedule.steps])


def run_summary(schedule: Schedule, sla: Sla, num_gpus: int) -> dict[str, Any]:
    """The run's figures (one row of ``summary.csv``)."""
    req = request_table(schedule, sla)
    start = float(req["arrival_s"].min())
    end = float((req["arrival_s"] + req["e2e_latency_s"]).max())
    duration = end - start
    output = int(req["output_tokens"].sum())
    total = output + int(req["prompt_tokens"].sum())
    busy = 0.0
    moe = straggler = 0.0
    for s in schedule.steps:
        c = s.cost
        busy += s.duration_s * num_gpus if c.gpu_busy_s is None else float(sum(c.gpu_busy_s))
        moe += c.moe_latency_s
        straggler += c.straggler_delay_s
    met = int(req["meets_sla"].sum())
    out: dict[str, Any] = {
        "requests": len(req), "steps": len(schedule.steps), "duration_s": duration,
        "requests_per_s": len(req) / duration,
        "output_tokens_per_s": output / duration,
        "total_tokens_per_s": total / duration,
        "sla_ttft_s": sla.ttft_s, "sla_tpot_s": sla.tpot_s,
        "sla_attainment": met / len(req),
        "goodput_requests_per_s": met / duration,
        "gpu_utilisation": busy / (num_gpus * duration),
        "straggler_share": straggler / moe if moe > 0 else math.nan,
        "max_waiting": max((s.waiting for s in schedule.steps), default=0),
    }
    for name in ("ttft_s", "tpot_s", "e2e_latency_s"):
        values = req[name].dropna().to_numpy(dtype=np.float64)
        out[f"{name}_mean"] = float(values.mean()) if values.size else math.nan
        for p in _PERCENTILES:
            out[f"{name}_p{p}"] = float(np.percentile(values, p)) if values.size else math.nan
    return out
