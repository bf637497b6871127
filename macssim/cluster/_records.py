"""What one simulated step leaves behind: per-phase, per-GPU-layer, per-layer and per-step
records, each a frozen dataclass that describes itself (``to_dict``), plus tables
(pandas) and a Chrome-trace / Perfetto timeline. Column names are the metric names of
``macssim.cluster.metrics``.

Phase records are kept as one numpy table while simulating (a 64-GPU, 48-layer step has
~30k of them) and become dataclasses only when asked for.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from macssim.cluster.metrics import PHASES

__all__ = [
    "PhaseRecord",
    "GpuLayerRecord",
    "LayerRecord",
    "StepResult",
    "PHASE_DTYPE",
    "chrome_trace",
    "write_chrome_trace",
]

PHASE_DTYPE = np.dtype([("layer", "<i4"), ("gpu", "<i4"), ("phase", "<i1"),
                        ("start_s", "<f8"), ("end_s", "<f8")])
"""Row of the phase table: ``phase`` indexes ``metrics.PHASES``; layer -1 is the vision
encoder, layer L (the number of MoE layers) the output head."""


def _flat_dict(record: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` for a record of scalars, without its recursive deep copy
    (a replay turns ~10k GPU-layer records into rows per policy and step)."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


@dataclass(frozen=True)
class PhaseRecord:
    """One phase of one GPU: when it started and ended (seconds from the step's start)."""

    step: int
    layer: int
    gpu: int
    phase: str
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict[str, Any]:
        return {**_flat_dict(self), "duration_s": self.duration_s}

    def to_chrome_event(self, *, offset_s: float = 0.0, pid: int = 0) -> dict[str, Any]:
        """A complete ("X") event; ``pid`` groups GPUs (macssim uses the node)."""
        return {"name": self.phase, "cat": "macssim", "ph": "X", "pid": pid, "tid": self.gpu,
                "ts": (offset_s + self.start_s) * 1e6, "dur": self.duration_s * 1e6,
                "args": {"step": self.step, "layer": self.layer}}


@dataclass(frozen=True)
class GpuLayerRecord:
    """One GPU in one MoE layer."""

    step: int
    layer: int
    gpu: int
    tokens: int
    """Tokens whose attention runs on this GPU."""
    expert_assignments: int
    active_experts: int
    hottest_expert_rows: int
    padded_rows: int
    dispatch_sent_bytes: float
    dispatch_received_bytes: float
    arrival_s: float

    def to_dict(self) -> dict[str, Any]:
        return _flat_dict(self)


@dataclass(frozen=True)
class LayerRecord:
    """One MoE layer of one step (see ``docs/metrics.md`` for each metric)."""

    step: int
    layer: int
    start_s: float
    end_s: float
    layer_latency_s: float
    attention_s: float
    moe_latency_s: float
    straggler_delay_s: float
    imbalance: float
    kept_assignments: int
    dropped_assignments: int
    dispatch_bytes: float

    def to_dict(self) -> dict[str, Any]:
        return _flat_dict(self)


@dataclass(frozen=True)
class StepResult:
    """Everything one ``simulate_step`` call measured."""

    step: int
    step_kind: str
    topology: str
    num_gpus: int
    gpus_per_node: int
    num_tokens: int
    step_latency_s: float
    vision_s: float
    head_s: float
    attention_s: float
    """Sum over layers of ``attention_s``."""
    moe_latency_s: float
    """Sum over layers of ``moe_latency_s``."""
    straggler_delay_s: float
    """Sum over layers of ``straggler_delay_s``."""
    moe_share: float
    tokens_per_s: float
    dispatch_bytes: float
    """Sum over layers of ``dispatch_bytes``."""
    layers: tuple[LayerRecord, ...]
    gpu_layers: tuple[GpuLayerRecord, ...]
    phase_table: np.ndarray = field(repr=False, compare=False)
    """[N] ``PHASE_DTYPE``: every phase of every GPU, in the order they ended."""

    _SCALARS = ("step", "step_kind", "topology", "num_gpus", "num_tokens", "step_latency_s",
                "vision_s", "head_s", "attention_s", "moe_latency_s", "straggler_delay_s",
                "moe_share", "tokens_per_s", "dispatch_bytes")

    def to_dict(self) -> dict[str, Any]:
        """The step's summary row."""
        return {name: getattr(self, name) for name in self._SCALARS}

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per MoE layer (the per-layer table)."""
        return [layer.to_dict() for layer in self.layers]

    @functools.cached_property
    def phases(self) -> tuple[PhaseRecord, ...]:
        return tuple(PhaseRecord(self.step, int(r["layer"]), int(r["gpu"]), PHASES[r["phase"]],
                                 float(r["start_s"]), float(r["end_s"]))
                     for r in self.phase_table)

    def phases_frame(self) -> Any:
        """The phase table as a pandas DataFrame (``frames()["phases"]`` alone)."""
        import pandas as pd

        table = self.phase_table
        return pd.DataFrame({
            "step": self.step, "layer": table["layer"], "gpu": table["gpu"],
            "phase": np.asarray(PHASES, dtype=object)[table["phase"]],
            "start_s": table["start_s"], "end_s": table["end_s"],
            "duration_s": table["end_s"] - table["start_s"]})

    def frames(self) -> dict[str, Any]:
        """pandas DataFrames: ``step`` (one row), ``layers``, ``gpu_layers``, ``phases``."""
        import pandas as pd

        return {
            "step": pd.DataFrame([self.to_dict()]),
            "layers": pd.DataFrame(self.to_records()),
            "gpu_layers": pd.DataFrame([r.to_dict() for r in self.gpu_layers]),
            "phases": self.phases_frame(),
        }

    def to_chrome_trace(self, *, offset_s: float = 0.0) -> list[dict[str, Any]]:
        """Chrome-trace events of this step (one process per node, one thread per GPU)."""
        table = self.phase_table
        start_us = (offset_s + table["start_s"]) * 1e6
        dur_us = (table["end_s"] - table["start_s"]) * 1e6
        pid = table["gpu"] // self.gpus_per_node
        return [{"name": PHASES[ph], "cat": "macssim", "ph": "X", "pid": int(p), "tid": int(g),
                 "ts": float(ts), "dur": float(d), "args": {"step": self.step, "layer": int(ly)}}
                for ph, p, g, ts, d, ly in zip(table["phase"].tolist(), pid.tolist(),
                                               table["gpu"].tolist(), start_us.tolist(),
                                               dur_us.tolist(), table["layer"].tolist(),
                                               strict=True)]


def chrome_trace(results: Iterable[StepResult]) -> dict[str, Any]:
    """A Chrome-trace / Perfetto document of consecutive steps, laid end to end."""
    events: list[dict[str, Any]] = []
    offset_s = 0.0
    named: set[int] = set()
    for result in results:
        for gpu in range(result.num_gpus):
            if gpu in named:
                continue
            named.add(gpu)
            node = gpu // result.gpus_per_node
            events.append({"name": "process_name", "ph": "M", "pid": node,
                           "args": {"name": f"node {node}"}})
            events.append({"name": "thread_name", "ph": "M", "pid": node, "tid": gpu,
                           "args": {"name": f"GPU {gpu}"}})
        events.extend(result.to_chrome_trace(offset_s=offset_s))
        offset_s += result.step_latency_s
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_chrome_trace(path: str | os.PathLike, results: Iterable[StepResult]) -> Path:
    """Write ``chrome_trace(results)`` as JSON (temporary file, then rename)."""
    path = Path(path)
    document = chrome_trace(results)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(document, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
