"""The cheapest configuration of a sweep that meets a service-level target.

An SLA is a list of bounds on the table's figures (``moe_latency_p99_s<=0.0005``,
``dropped_semantic_mass_frac<=0.01``, ``tokens_per_s>=20000``). Among the rows that ran
without error and meet every bound, the cheapest is, in this order:

1. the fewest GPUs (``num_gpus``): the hardware bought or rented;
2. then the fewest GPU-seconds per token (``num_gpus / tokens_per_s``; a serving row's
   ``total_tokens_per_s``): the same GPUs serving more;
3. then the least dropped semantic mass (``dropped_semantic_mass_frac``): the same cost
   for less quality lost;
4. then the sweep's own order (point index, then policy order), so ties are stable.

The margin of a bound is its slack as a fraction of the bound (``(bound − value) /
bound`` for ``<=``, ``(value − bound) / bound`` for ``>=``); the row's margin is its
tightest bound's. When no row meets the SLA, the closest is the one whose worst bound is
missed by the least (the same relative measure, negative).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from macssim._validate import brief
from macssim.sweep._axes import SweepError

__all__ = ["SEARCH", "SLA_METRICS", "Bound", "Recommendation", "default_kind", "parse_bound",
           "recommend", "search_spec"]

SLA_METRICS: dict[str, str] = {
    "moe_latency_p99_s": "<=",
    "moe_latency_mean_s": "<=",
    "step_latency_mean_s": "<=",
    "straggler_delay_mean_s": "<=",
    "straggler_share": "<=",
    "imbalance_mean": "<=",
    "imbalance_max": "<=",
    "dropped_assignments_frac": "<=",
    "dropped_gate_mass_frac": "<=",
    "dropped_semantic_mass_frac": "<=",
    "tokens_lost_all_frac": "<=",
    "tokens_per_s": ">=",
    # serving sweeps (kind "serve"; docs/metrics.md)
    "ttft_s_mean": "<=", "ttft_s_p50": "<=", "ttft_s_p90": "<=", "ttft_s_p99": "<=",
    "tpot_s_mean": "<=", "tpot_s_p50": "<=", "tpot_s_p90": "<=", "tpot_s_p99": "<=",
    "e2e_latency_s_mean": "<=", "e2e_latency_s_p99": "<=",
    "sla_attainment": ">=",
    "goodput_requests_per_s": ">=",
    "output_tokens_per_s": ">=",
    "total_tokens_per_s": ">=",
}
"""The figures an SLA may bound (replay's summary, and a serving sweep's) and the
direction that is good for each."""


@dataclass(frozen=True)
class Bound:
    metric: str
    op: str
    """``<=`` or ``>=``."""
    value: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    def margin(self, row: dict[str, Any]) -> float:
        """Slack as a fraction of the bound (negative: missed); NaN figures miss by inf."""
        x = row.get(self.metric)
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return -math.inf
        slack = (self.value - x) if self.op == "<=" else (x - self.value)
        return slack / abs(self.value) if self.value else slack


def parse_bound(text: str) -> Bound:
    """``NAME<=VALUE`` or ``NAME>=VALUE``; the name one of ``SLA_METRICS`` in its good
    direction, the value a finite number."""
    m = re.fullmatch(r"\s*([a-z0-9_]+)\s*(<=|>=)\s*(\S+)\s*", text or "")
    if not m:
        raise SweepError(f"SLA {brief(text)}: expected NAME<=VALUE or NAME>=VALUE, e.g. "
                         "moe_latency_p99_s<=0.0005")
    name, op, raw = m.groups()
    if name not in SLA_METRICS:
        raise SweepError(f"SLA {brief(text)}: unknown figure {name!r}; known: "
                         f"{', '.join(SLA_METRICS)}")
    if op != SLA_METRICS[name]:
        raise SweepError(f"SLA {brief(text)}: {name} is bounded with {SLA_METRICS[name]} "
                         f"(lower is better)" if SLA_METRICS[name] == "<=" else
                         f"SLA {brief(text)}: {name} is bounded with >= (higher is better)")
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise SweepError(f"SLA {brief(text)}: the bound must be a finite number >= 0, got "
                         f"{brief(raw)}")
    return Bound(name, op, value)


@dataclass(frozen=True)
class Recommendation:
    met: bool
    """Whether any row meets every bound."""
    best: dict[str, Any] | None
    """The cheapest row meeting the SLA; when none does, the closest row."""
    runner_up: dict[str, Any] | None
    """The next cheapest row meeting it (None when fewer than two do)."""
    margins: dict[str, float]
    """Bound (as text) -> ``best``'s margin on it."""
    candidates: int
    """Rows considered (ran without error, of the chosen kind and policies)."""
    meeting: int
    """Rows meeting the SLA."""
    failed_points: int
    """Points of the table that ended with an error (not considered)."""


def cost_key(row: dict[str, Any]) -> tuple:
    tps = row.get("tokens_per_s") or row.get("total_tokens_per_s") or 0.0
    gpu_s_per_token = row["num_gpus"] / tps if tps > 0 else math.inf
    drop = row.get("dropped_semantic_mass_frac")
    drop = math.inf if drop is None or drop != drop else drop
    return (row["num_gpus"], gpu_s_per_token, drop, row["point_index"], row["_order"])


def default_kind(rows: list[dict[str, Any]]) -> str:
    """``all`` (a replay's rows over all steps), or ``serve`` for a table of serving runs
    only."""
    kinds = {r.get("kind") for r in rows if r.get("status") == "ok"}
    return "serve" if "serve" in kinds and "all" not in kinds else "all"


def recommend(rows: list[dict[str, Any]], sla: list[Bound], *, kind: str = "all",
              policies: list[str] | None = None) -> Recommendation:
    """The cheapest row meeting every bound of ``sla`` (module docstring: the order)."""
    if not sla:
        raise SweepError("recommend: no SLA given; e.g. --sla moe_latency_p99_s<=0.0005")
    failed = len({r["point_id"] for r in rows if r.get("status") != "ok"})
    ok = [dict(r, _order=i) for i, r in enumerate(rows)
          if r.get("status") == "ok" and r.get("kind") == kind
          and (policies is None or r.get("policy") in policies)]
    if not ok:
        have = sorted({str(r.get("kind")) for r in rows if r.get("status") == "ok"})
        raise SweepError(f"recommend: no finished point of kind {kind!r}"
                         + (f" and policy {', '.join(policies)}" if policies else "")
                         + f" in the table (kinds there: {', '.join(have) or 'none'}; "
                           f"{failed} failed points)")
    meeting = sorted((r for r in ok if all(b.margin(r) >= 0 for b in sla)), key=cost_key)
    if meeting:
        best = meeting[0]
        runner = meeting[1] if len(meeting) > 1 else None
    else:
        best = min(ok, key=lambda r: (-min(b.margin(r) for b in sla), cost_key(r)))
        runner = None
    def strip(r: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if r is None else {k: v for k, v in r.items() if k != "_order"}

    return Recommendation(met=bool(meeting), best=strip(best), runner_up=strip(runner),
                          margins={str(b): b.margin(best) for b in sla},
                          candidates=len(ok), meeting=len(meeting), failed_points=failed)


SEARCH: dict[str, Any] = {
    "axes": {"topology": ["8xH100", "16xH100"], "capacity_factor": [1.0, 1.25, 1.5]},
    "settings": {"policies": ["macs", "token-drop"], "steps": 2},
}
"""``macssim recommend --search``: a small sweep a first question can afford (6 points,
two policies each, the first prefill and decode step of the trace)."""


def search_spec(trace: str = "default"):
    """The built-in search over ``trace`` as a ``SweepSpec``."""
    from macssim.sweep._spec import make_sweep

    return make_sweep({**SEARCH["axes"], "trace": [trace]}, SEARCH["settings"],
                      where="recommend --search")
