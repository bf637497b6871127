"""Records describe themselves; tables and the Chrome trace agree with the records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from macssim.cluster import (
    LayerRouting,
    PhaseRecord,
    SimOptions,
    chrome_trace,
    simulate_step,
    write_chrome_trace,
)
from macssim.cluster.metrics import METRICS, PHASES
from macssim.placement import contiguous_placement


@pytest.fixture
def result(make_topo, tiny_model):
    topo = make_topo(2, 4)
    rng = np.random.default_rng(1)
    ids = np.stack([rng.choice(8, 2, replace=False) for _ in range(40)])
    routing = LayerRouting(ids, np.ones_like(ids, bool))
    return simulate_step(topo, tiny_model, contiguous_placement(8, 8), "prefill",
                         token_gpu=rng.integers(0, 8, 40), position=np.arange(40),
                         modality=np.zeros(40, np.uint8), layers=[routing, routing],
                         step_index=3, options=SimOptions())


def test_records_and_tables_agree(result):
    frames = result.frames()
    assert len(frames["layers"]) == 2 and len(frames["gpu_layers"]) == 16
    assert len(frames["phases"]) == len(result.phases) == result.phase_table.size
    assert frames["step"].iloc[0]["step_latency_s"] == result.step_latency_s
    assert set(frames["phases"]["phase"]) <= set(PHASES)
    assert (frames["phases"]["step"] == 3).all()
    assert result.to_records()[1] == result.layers[1].to_dict()
    record = result.phases[0]
    assert isinstance(record, PhaseRecord)
    assert record.to_dict()["duration_s"] == record.end_s - record.start_s


def test_column_names_are_metric_names(result):
    names = {m.name for m in METRICS}
    layer_columns = set(result.layers[0].to_dict())
    assert {"imbalance", "straggler_delay_s", "layer_latency_s", "attention_s",
            "moe_latency_s", "dispatch_bytes"} <= layer_columns & names
    assert {"expert_assignments", "arrival_s"} <= set(result.gpu_layers[0].to_dict()) & names
    assert {"step_latency_s", "moe_share", "tokens_per_s"} <= set(result.to_dict()) & names


def test_chrome_trace_matches_phase_records(result, tmp_path):
    doc = chrome_trace([result, result])
    spans = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == 2 * len(result.phases)
    first = result.phases[0].to_chrome_event(pid=result.phases[0].gpu // 4)
    key = ("ts", "tid", "pid", "name")
    assert [spans[0][k] for k in key] == [first[k] for k in key]
    # The second step is laid after the first.
    second = spans[len(result.phases)]
    assert second["ts"] == pytest.approx((result.step_latency_s + result.phases[0].start_s) * 1e6)
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M"}
    assert {"node 0", "node 1", "GPU 7"} <= names
    path = write_chrome_trace(tmp_path / "timeline.json", [result])
    assert json.loads(path.read_text())["traceEvents"]
    assert [p.name for p in tmp_path.iterdir()] == ["timeline.json"]


def test_every_reported_column_is_a_defined_metric(result):
    names = {m.name for m in METRICS}
    identifiers = {"step", "layer", "gpu", "step_kind", "topology", "num_gpus", "num_tokens"}
    columns = (set(result.to_dict()) | set(result.layers[0].to_dict())
               | set(result.gpu_layers[0].to_dict()))
    assert columns - identifiers <= names, columns - identifiers - names
