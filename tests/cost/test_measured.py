"""The measured cost backend (``MeasuredCosts``) and how replay picks it.

Tables are small synthetic ones written in macssim's CSV format with chosen latencies, so
every expected value is a closed form: a measured point is returned as measured, the
log-log midpoint of two points is their geometric mean, a skewed expert load is the
balanced level times the roofline's ratio, written out from the GroupedGemm formula."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import macssim.cost._measured as measured_mod
from macssim import TopologyError
from macssim.cli import main
from macssim.cost import GROUPED_GEMM, MeasuredCosts, Precision, head_s, load_table
from macssim.hardware import load_topology
from macssim.trace import ModelFacts

from ..conftest import GPU, SMALL_MODEL

BF16 = Precision()
TRIPLE = dict(system="testsys", framework="fw", version="1.0")


def _gemm_rows(shapes, ms, latency):
    return [dict(op="gemm", **TRIPLE, kernel="k", dtype="bfloat16", m=m, n=n, k=k,
                 latency_s=latency(m, n, k)) for n, k in shapes for m in ms]


def _moe_rows(model: ModelFacts, ep: int, tokens, latency, experts=None):
    return [dict(op="moe", **TRIPLE, kernel="k", dtype="bfloat16", distribution="balanced",
                 hidden=model.hidden_size, inter=model.expert_intermediate_size,
                 experts=experts or model.num_experts, topk=model.top_k, tp=1, ep=ep,
                 tokens=t, latency_s=latency(t)) for t in tokens]


def _write(directory: Path, name: str, rows) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


MODEL = ModelFacts(name="m", num_layers=2, moe_layers=(0, 1), num_experts=16, top_k=2,
                   hidden_size=1024, expert_intermediate_size=512, dense_intermediate_size=2048,
                   num_attention_heads=8, num_kv_heads=2, head_dim=128, vocab_size=151936)
EP = 4


@pytest.fixture
def costs(tmp_path):
    h, inter = MODEL.hidden_size, MODEL.dense_intermediate_size
    # m = 4 and 64 measured at 10 and 40 µs for the dense MLP's GEMMs; other m a power law.
    table = {4: 1e-5, 64: 4e-5}
    gemm = _gemm_rows([(2 * inter, h), (h, inter), (4096, 1024)], [1, 4, 64, 1024],
                      lambda m, n, k: table.get(m, 1e-6 * m ** 0.5))
    moe = _moe_rows(MODEL, EP, [64, 512, 4096], lambda t: {512: 1e-4}.get(t, 1e-7 * t))
    tables = {"gemm": load_table(_write(tmp_path, "gemm", gemm)),
              "moe": load_table(_write(tmp_path, "moe", moe))}
    return MeasuredCosts(tables, **TRIPLE, ep=EP)


def test_a_measured_point_is_returned_exactly(costs):
    out = costs.dense_mlp_s(MODEL, GPU, np.array([4.0, 0.0]), BF16)
    assert out[0] == 1e-5 + 1e-5  # gate_up and down, both measured at m = 4
    assert out[1] == 0.0          # no tokens, no GEMM
    cov = costs.coverage()["operations"]
    assert cov["dense_mlp_gate_up"] == {"table": 1} and cov["dense_mlp_down"] == {"table": 1}


def test_between_points_it_interpolates_log_log(costs):
    # m = 16 is the log-midpoint of 4 and 64: the geometric mean of 10 and 40 µs.
    out = costs.dense_mlp_s(MODEL, GPU, np.array([16.0]), BF16)
    assert out[0] == pytest.approx(2 * math.sqrt(1e-5 * 4e-5), rel=1e-12)


def test_a_shape_outside_the_tables_falls_back_to_the_roofline(costs):
    requests = np.array([3.0, 0.0, 1.0, 5.0])
    out = costs.head_s(MODEL, GPU, requests, BF16)
    # n = vocab 151936 is > 2x beyond the widest measured n (4096): the roofline's head.
    np.testing.assert_array_equal(out, head_s(MODEL, GPU, requests, BF16))
    lm = costs.coverage()["operations"]["lm_head"]
    assert list(lm) == ["roofline: n=151936 above the measured 1024…4096 by more than 2×"]
    assert lm[next(iter(lm))] == 3  # the three GPUs with requests


def test_an_unmeasured_moe_shape_falls_back_and_says_which(costs):
    other = ModelFacts(**{**MODEL.__dict__, "num_experts": 32})
    rows = np.array([[10, 20, 0, 5]])
    from macssim.cost import expert_phase_s

    out = costs.expert_phase_s(other, GPU, rows, BF16)
    np.testing.assert_array_equal(out, expert_phase_s(other, GPU, rows, precision=BF16))
    (why,) = costs.coverage()["operations"]["experts"]
    assert why.startswith("roofline: shape not measured (") and "experts=32" in why


def _grouped_gemm_s(rows, h, inter, bpe=2):
    """docs/cluster.md's expert phase written out: fixed + max(compute, memory)."""
    k = GROUPED_GEMM
    active = [r for r in rows if r > 0]
    padded = [-(-r // k.tile_rows) * k.tile_rows for r in active]
    compute = sum(6.0 * h * inter * (p + k.half_efficiency_rows) for p in padded) / (
        GPU.bf16_flops_per_s * GPU.compute_efficiency)
    memory = (3.0 * h * inter * bpe * len(active) + 2 * h * bpe * sum(active)) / (
        GPU.hbm_bytes_per_s * GPU.memory_efficiency)
    return k.fixed_s + max(compute, memory)


def test_one_hot_and_even_loads_differ_by_the_rooflines_ratio(costs):
    # 256 rows on a rank of 4 local experts: tokens = 256 * ep / topk = 512, measured at
    # 100 µs. Even spread: the level itself; one-hot: the level times the roofline ratio.
    rows = np.array([[256, 0, 0, 0], [64, 64, 64, 64]])
    out = costs.expert_phase_s(MODEL, GPU, rows, BF16)
    h, inter = MODEL.hidden_size, MODEL.expert_intermediate_size
    ratio = _grouped_gemm_s([256, 0, 0, 0], h, inter) / _grouped_gemm_s([64] * 4, h, inter)
    assert out[1] == pytest.approx(1e-4, rel=1e-12)
    assert out[0] == pytest.approx(1e-4 * ratio, rel=1e-12)
    assert ratio != pytest.approx(1.0, abs=0.05)  # the shapes do differ
    assert costs.coverage()["operations"]["experts"] == {"table": 2}


def test_a_rank_without_rows_pays_the_roofline_fixed_cost(costs):
    out = costs.expert_phase_s(MODEL, GPU, np.zeros((1, 4), dtype=np.int64), BF16)
    assert out[0] == pytest.approx(GROUPED_GEMM.fixed_s)


# --- topology field and replay ---------------------------------------------------------


def _topology_file(tmp_path: Path, cost_tables: str) -> Path:
    text = Path(load_topology("8xH100").source).read_text()
    text = text[:text.index("cost_tables:")] + cost_tables
    path = tmp_path / "topo.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("block, says", [
    ("cost_tables:\n  system: a\n  framework: b\n", 'missing field "cost_tables.version"'),
    ("cost_tables:\n  system: a\n  framework: b\n  version: 1.3\n",
     '"cost_tables.version" must be a non-empty string'),
    ("cost_tables:\n  system: a\n  framework: b\n  version: x\n  kernel: y\n",
     "unknown key(s) ['kernel'] in \"cost_tables\""),
])
def test_topology_cost_tables_is_validated(tmp_path, block, says):
    path = _topology_file(tmp_path, block)
    with pytest.raises(TopologyError) as e:
        load_topology(path)
    assert str(path) in str(e.value) and says in str(e.value)


def test_presets_name_their_tables():
    spec = load_topology("8xH200").cost_tables
    assert (spec.system, spec.framework, spec.version) == ("h200_sxm", "trtllm", "1.3.0rc20")


def _replay_tables(directory: Path) -> None:
    m, h = SMALL_MODEL, SMALL_MODEL.hidden_size
    q, kv = m.num_attention_heads * m.head_dim, m.num_kv_heads * m.head_dim
    _write(directory, "gemm", _gemm_rows([(q + 2 * kv, h), (h, q)], [1, 16, 256, 4096],
                                         lambda m_, n, k: 2e-6 * m_ ** 0.3))
    _write(directory, "moe", _moe_rows(m, 8, [1, 16, 256, 4096, 32768],
                                       lambda t: 3e-5 * t ** 0.4))


def _replay(small_trace, tmp_path, *extra):
    return CliRunner().invoke(main, ["replay", "--trace", str(small_trace), "--policy",
                                     "token-drop", "--steps", "2", "--out",
                                     str(tmp_path / "r"), *extra])


def test_replay_with_tables_records_the_backend(small_trace, tmp_path):
    _replay_tables(tmp_path / "tables")
    topo = _topology_file(tmp_path, "cost_tables: {system: testsys, framework: fw, "
                          "version: '1.0'}\n")
    res = _replay(small_trace, tmp_path, "--topology", str(topo), "--tables",
                  str(tmp_path / "tables"))
    assert res.exit_code == 0, res.output
    assert res.output.count("costs: measured tables testsys/fw/1.0") == 1
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    costs = run["costs"]
    assert costs["backend"] == "measured"
    assert costs["tables"] == {**TRIPLE, "source": str(tmp_path / "tables")}
    ops = costs["operations"]
    assert ops["experts"].get("table", 0) > 0 and ops["attention_qkv"] == {
        "table": ops["attention_out"]["table"]}
    assert all(k.startswith("roofline:") for k in ops["lm_head"])
    assert run["config"]["costs"] == "auto" and run["config"]["tables"] == str(
        tmp_path / "tables")


def test_tables_that_lack_the_topologys_are_a_clear_error(small_trace, tmp_path):
    _replay_tables(tmp_path / "tables")
    topo = _topology_file(tmp_path, "cost_tables: {system: other, framework: fw, "
                          "version: '2.0'}\n")
    res = _replay(small_trace, tmp_path, "--topology", str(topo), "--tables",
                  str(tmp_path / "tables"))
    assert res.exit_code != 0
    assert (f'{topo}: "cost_tables" names other/fw/2.0, but {tmp_path / "tables"} holds '
            "gemm: testsys/fw/1.0; moe: testsys/fw/1.0") in res.output
    assert not (tmp_path / "r").exists()


def test_without_tables_the_roofline_is_said_once(small_trace, tmp_path, monkeypatch):
    monkeypatch.setattr(measured_mod, "_aiconfigurator_installed", lambda: False)
    res = _replay(small_trace, tmp_path)
    assert res.exit_code == 0, res.output
    assert res.output.count("costs: roofline") == 1
    assert "aiconfigurator-core is not installed" in res.output
    costs = json.loads((tmp_path / "r" / "run.json").read_text())["costs"]
    assert costs["backend"] == "roofline" and "not installed" in costs["note"]


def test_measured_without_tables_is_an_error(small_trace, tmp_path, monkeypatch):
    monkeypatch.setattr(measured_mod, "_aiconfigurator_installed", lambda: False)
    res = _replay(small_trace, tmp_path, "--costs", "measured")
    assert res.exit_code != 0 and "--tables" in res.output and "h100_sxm" in res.output


def test_costs_roofline_never_looks_for_tables(small_trace, tmp_path):
    res = _replay(small_trace, tmp_path, "--costs", "roofline", "--tables",
                  str(tmp_path / "absent"))
    assert res.exit_code == 0, res.output
    costs = json.loads((tmp_path / "r" / "run.json").read_text())["costs"]
    assert costs["backend"] == "roofline" and costs["note"] is None
