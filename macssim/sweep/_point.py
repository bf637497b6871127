"""One sweep point, run on its own: in this process, a worker process or a Ray task.

``run_point`` takes plain data (``Point.to_dict()``) and returns plain rows, one per
policy × summary kind, or one error row: a failing point never stops the sweep. Torch
gets one thread per worker, so N workers use N cores and not N × cores.

What a point runs is decided here, from its axes: a replay (of a trace, or of a scenario
synthesised first), or, when the point has an ``arrival_rate``, a serving run per policy
(``macssim.serve``: Poisson arrivals at that rate, the sweep's ``requests`` and SLA),
whose rows have kind ``serve`` and the serving figures (docs/metrics.md)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from macssim import __version__
from macssim._errors import MacssimError
from macssim.sweep._axes import AXES, axis, replay_value, trace_path
from macssim.sweep._spec import Point

__all__ = ["run_point", "worker_init"]


def worker_init() -> None:
    """One torch thread per worker process (set before torch is imported where it can)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def _base_row(point: Point) -> dict[str, Any]:
    s = point.settings
    row: dict[str, Any] = {"point_id": point.point_id, "point_index": point.index}
    for ax in AXES:
        row[ax.name] = point.axes.get(ax.name)
    row.update({"policies": ",".join(s["policies"]), "steps_requested": s["steps"],
                "seed": s["seed"], "network_rtol": float(s["network_rtol"]),
                "model_preset": s["model"] if "scenario" in point.axes else None,
                "scenario_steps": s["scenario_steps"] if "scenario" in point.axes else None,
                "macssim_version": __version__})
    return row


def run_point(point_data: dict[str, Any]) -> list[dict[str, Any]]:
    """Replay one point; its summary rows, or one row with ``status="error"`` and the
    error (``Type: message``) when it fails, whatever the failure."""
    point = Point.from_dict(point_data)
    base = _base_row(point)
    try:
        rows = _replay_point(point)
    except Exception as e:  # noqa: BLE001 - recorded in the table; the sweep goes on
        kind = "" if isinstance(e, MacssimError) else f"{type(e).__name__}: "
        return [{**base, "status": "error", "error": f"{kind}{' '.join(str(e).split())}"[:2000]}]
    return [{**base, "status": "ok", "error": None, **r} for r in rows]


def _replay_point(point: Point) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="macssim-sweep-") as tmp:
        if "scenario" in point.axes:
            from macssim.trace import synthesize

            trace = Path(tmp) / "scenario.mtrace"
            synthesize(trace, model=point.settings["model"], scenario=point.axes["scenario"],
                       num_steps=point.settings["scenario_steps"], seed=point.settings["seed"])
        else:
            trace = trace_path(point.axes["trace"])
        if "arrival_rate" in point.axes:
            return _serve_rows(point, trace)
        return _replay_rows(point, trace)


def _serve_rows(point: Point, trace: Path) -> list[dict[str, Any]]:
    """One serving run per policy at the point's arrival rate: one ``serve`` row each."""
    from macssim.serve import ServeConfig, Sla, serve

    a, s = point.axes, point.settings
    rows = []
    for policy in s["policies"]:
        config = ServeConfig(trace=trace, topology=a["topology"], policy=policy,
                             capacity_factor=a["capacity_factor"], rate_per_s=a["arrival_rate"],
                             num_requests=s["requests"], sla=Sla(s["sla_ttft"], s["sla_tpot"]),
                             seed=s["seed"], precision=a["precision"],
                             alltoall=replay_value(axis("alltoall"), a["alltoall"]),
                             network_rtol=s["network_rtol"],
                             placement=a.get("placement", "contiguous"),
                             redundant_experts=a.get("redundant_experts", 0))
        result = serve(config)
        topo = result.topology
        rows.append({"model": result.model.name, "num_gpus": topo.num_gpus,
                     "nodes": topo.nodes, "gpu": topo.gpu.kind,
                     "alltoall_engine": config.alltoall or topo.alltoall.engine,
                     "trace_sha256": result.trace_sha256, "policy": policy, "kind": "serve",
                     **{k: _plain(v) for k, v in result.summary.items()}})
    return rows



def _replay_rows(point: Point, trace: Path) -> list[dict[str, Any]]:
    from macssim.replay import ReplayConfig, replay
    from macssim.report import summarize

    fields = {ax.replay_field: replay_value(ax, point.axes[ax.name]) for ax in AXES
              if ax.replay_field is not None and ax.name in point.axes}
    s = point.settings
    config = ReplayConfig(trace=trace, policies=tuple(s["policies"]), max_steps=s["steps"],
                          seed=s["seed"], network_rtol=s["network_rtol"], **fields)
    result = replay(config, on_phases=lambda _frame: None)  # phases are not kept
    summary = summarize(result.layers, result.steps, result.drops, result.policies)
    topo = result.topology
    ran = {"model": result.model.name, "num_gpus": topo.num_gpus, "nodes": topo.nodes,
           "gpu": topo.gpu.kind, "alltoall_engine": result.config.alltoall,
           "trace_sha256": result.trace_sha256}
    rows = []
    for rec in summary.to_dict("records"):
        rows.append({**ran, **{k: _plain(v) for k, v in rec.items()}})
    return rows


def _plain(v: Any) -> Any:
    """numpy scalars as Python numbers, so every row is plain data."""
    if hasattr(v, "item") and not isinstance(v, str | bytes):
        return v.item()
    return v
