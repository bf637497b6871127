"""Serving sweeps: an arrival-rate axis turns each point into serving runs (one per
policy), rows of kind ``serve`` equal to what ``macssim.serve`` gives for the same
configuration, judged by ``recommend`` and drawn by the report."""

from __future__ import annotations

import pandas as pd
import pytest

from macssim.serve import ServeConfig, Sla, serve
from macssim.sweep import (
    SweepError,
    default_kind,
    make_sweep,
    parse_bound,
    read_results,
    recommend,
    run_sweep,
)


@pytest.fixture(scope="module")
def serving_table(small_trace, tmp_path_factory):
    spec = make_sweep({"trace": [str(small_trace)], "arrival_rate": [4.0, 400.0],
                       "placement": ["contiguous", "eplb"]},
                      {"policies": ["token-drop"], "requests": 6, "sla_ttft": 0.05,
                       "sla_tpot": 0.01})
    path = tmp_path_factory.mktemp("serve-sweep") / "serve.parquet"
    outcome = run_sweep(spec, path)
    return spec, path, outcome


def test_rows_are_the_serving_runs_of_each_rate(serving_table, small_trace):
    spec, path, outcome = serving_table
    rows, _ = read_results(path)
    assert (outcome.ran, outcome.failed) == (4, 0)
    assert {(r["arrival_rate"], r["placement"], r["kind"], r["policy"]) for r in rows} == {
        (rate, placement, "serve", "token-drop") for rate in (4.0, 400.0)
        for placement in ("contiguous", "eplb")}
    for r in rows:
        direct = serve(ServeConfig(trace=small_trace, topology="8xH100", policy="token-drop",
                                   rate_per_s=r["arrival_rate"], num_requests=6,
                                   sla=Sla(0.05, 0.01), seed=0,
                                   placement=r["placement"])).summary
        for name in ("ttft_s_p99", "tpot_s_mean", "goodput_requests_per_s", "sla_attainment",
                     "total_tokens_per_s", "duration_s"):
            assert r[name] == pytest.approx(direct[name], rel=1e-12), name
        # goodput is the SLA-meeting share of the request rate
        assert r["goodput_requests_per_s"] == pytest.approx(
            r["sla_attainment"] * r["requests_per_s"], rel=1e-12)
        assert r["requests"] == 6 and r["num_gpus"] == 8
    assert default_kind(rows) == "serve"


def test_recommend_and_report_read_serving_rows(serving_table, tmp_path):
    from macssim.report import write_sweep_report

    _, path, _ = serving_table
    rows, _ = read_results(path)
    rec = recommend(rows, [parse_bound("sla_attainment>=0")], kind="serve")
    assert rec.met and rec.best["kind"] == "serve"
    report = write_sweep_report(pd.DataFrame(rows), tmp_path / "r", source=str(path),
                                command_line=["macssim", "report"], versions={})
    assert {"goodput_vs_rate.svg", "serve_pareto.svg", "index.html"} <= set(report.files)
    page = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    assert 'data-table="serving"' in page


def test_serving_settings_are_checked():
    with pytest.raises(SweepError, match='"requests"'):
        make_sweep({"arrival_rate": [1.0]}, {"requests": 0})
    with pytest.raises(SweepError, match="arrival_rates"):
        make_sweep({"arrival_rate": [-1.0]})
    with pytest.raises(SweepError, match='"sla_ttft"'):
        make_sweep({"arrival_rate": [1.0]}, {"sla_ttft": 0})
    # without rates, the sweep replays: no arrival_rate axis in the product
    assert "arrival_rate" not in make_sweep({}).points()[0].axes
