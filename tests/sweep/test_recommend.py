"""recommend: the cheapest row meeting an SLA in the documented cost order, its margins
computed by hand, the runner-up, and a clear answer when nothing meets it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from macssim.cli import main
from macssim.sweep import SweepError, parse_bound, recommend
from macssim.sweep._table import ResultsTable


def _row(i, gpus, tps, p99, drop, policy="macs", kind="all", status="ok"):
    return {"point_id": f"p{i}", "point_index": i, "status": status, "error": None,
            "trace": "default", "topology": f"{gpus}xH100", "num_gpus": gpus,
            "capacity_factor": 1.0, "precision": "bf16", "alltoall_engine": "nccl",
            "policy": policy, "kind": kind, "tokens_per_s": tps,
            "moe_latency_p99_s": p99, "dropped_semantic_mass_frac": drop}


ROWS = [
    _row(0, 16, 9000.0, 100e-6, 0.01),   # meets; 16 GPUs
    _row(1, 8, 4000.0, 300e-6, 0.02),    # 8 GPUs but p99 too slow
    _row(2, 8, 5000.0, 180e-6, 0.05),    # meets; 8 GPUs, 1.6e-3 GPU-s/token
    _row(3, 8, 6000.0, 190e-6, 0.10),    # meets; 8 GPUs, 1.33e-3 GPU-s/token: cheapest
    _row(4, 8, 6000.0, 150e-6, 0.04, kind="decode"),  # another kind: not judged
    _row(5, 4, 0.0, 0.0, 0.0, status="error"),        # failed: never judged
]
SLA = [parse_bound("moe_latency_p99_s<=200e-6"), parse_bound("dropped_semantic_mass_frac<=0.2")]


def test_cheapest_is_fewest_gpus_then_gpu_seconds_per_token():
    rec = recommend(ROWS, SLA)
    assert rec.met and rec.best["point_id"] == "p3" and rec.runner_up["point_id"] == "p2"
    assert (rec.candidates, rec.meeting, rec.failed_points) == (4, 3, 1)
    assert rec.margins["moe_latency_p99_s<=0.0002"] == pytest.approx((200 - 190) / 200)
    assert rec.margins["dropped_semantic_mass_frac<=0.2"] == pytest.approx((0.2 - 0.1) / 0.2)


def test_equal_cost_goes_to_the_smaller_semantic_drop():
    rows = [_row(0, 8, 5000.0, 1e-4, 0.3), _row(1, 8, 5000.0, 1e-4, 0.1)]
    assert recommend(rows, [parse_bound("moe_latency_p99_s<=1")]).best["point_id"] == "p1"


def test_a_higher_is_better_bound():
    rec = recommend(ROWS, [parse_bound("tokens_per_s>=8000")])
    assert rec.best["point_id"] == "p0" and rec.runner_up is None
    assert rec.margins["tokens_per_s>=8000"] == pytest.approx(1000 / 8000)


def test_no_row_meets_it_gives_the_closest():
    rec = recommend(ROWS, [parse_bound("moe_latency_p99_s<=90e-6")])
    assert not rec.met and rec.runner_up is None
    assert rec.best["point_id"] == "p0"  # misses by 10/90; the others by more
    assert rec.margins["moe_latency_p99_s<=9e-05"] == pytest.approx(-10 / 90)


@pytest.mark.parametrize("text, message", [
    ("p99<0.1", "expected NAME<=VALUE"),
    ("ttft_s<=2", "unknown figure 'ttft_s'"),
    ("tokens_per_s<=100", "bounded with >="),
    ("moe_latency_p99_s>=1", "bounded with <="),
    ("moe_latency_p99_s<=nan", "finite number >= 0"),
])
def test_bad_bounds_are_refused(text, message):
    with pytest.raises(SweepError, match=message):
        parse_bound(text)


def test_the_command_prints_the_choice_and_exits_1_when_nothing_meets(tmp_path):
    f = tmp_path / "r.parquet"
    ResultsTable(f, ROWS).write({})
    runner = CliRunner()
    ok = runner.invoke(main, ["recommend", str(f), "--sla", "moe_latency_p99_s<=200e-6",
                              "--sla", "dropped_semantic_mass_frac<=0.2"])
    assert ok.exit_code == 0, ok.output
    assert "cheapest meeting it: point 3" in ok.output
    assert "runner-up: point 2" in ok.output and "+5.0 %" in ok.output
    none = runner.invoke(main, ["recommend", str(f), "--sla", "moe_latency_p99_s<=1e-6"])
    assert none.exit_code == 1
    assert "no configuration meets the SLA" in none.output and "point 0" in none.output
    bad = runner.invoke(main, ["recommend", str(tmp_path / "missing.parquet"), "--sla",
                               "tokens_per_s>=1"])
    assert bad.exit_code == 1 and "no such results table" in bad.output


def test_search_runs_the_built_in_sweep_and_recommends_from_it(small_trace, tmp_path):
    """--search runs SEARCH's points on the trace (kept with --out) and recommends the
    cheapest of them: the same answer as recommending from that table afterwards."""
    from macssim.sweep import SEARCH, read_results, recommend, search_spec

    table = tmp_path / "search.parquet"
    res = CliRunner().invoke(main, ["recommend", "--search", "--trace", str(small_trace),
                                    "--out", str(table), "--sla", "step_latency_mean_s<=1"])
    assert res.exit_code == 0, res.output
    rows, _ = read_results(table)
    spec = search_spec(str(small_trace))
    assert len({r["point_id"] for r in rows}) == spec.num_points() == (
        len(SEARCH["axes"]["topology"]) * len(SEARCH["axes"]["capacity_factor"]))
    best = recommend(rows, [parse_bound("step_latency_mean_s<=1")]).best
    assert f"cheapest meeting it: point {best['point_index']}" in res.output
    assert "arrival_rate" not in res.output          # replay rows have no rate
    both = CliRunner().invoke(main, ["recommend", str(table), "--search", "--sla",
                                     "tokens_per_s>=1"])
    assert both.exit_code == 2 and "give a RESULTS table or --search" in both.output
