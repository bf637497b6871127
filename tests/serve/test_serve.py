"""A serving run end to end: arrivals, routing composed from the trace, the cluster's step
times, metrics, the report and the CLI; against replay of the same steps, hand-computed
figures and bad input."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from macssim.cli import main
from macssim.replay import ReplayConfig, replay
from macssim.serve import (
    SchedulerConfig,
    ServeConfig,
    ServeError,
    Sla,
    poisson_arrivals,
    read_arrivals,
    serve,
    write_serve_report,
)
from macssim.trace import open_trace, write_trace
from tests.conftest import SMALL_MODEL, make_topology

ONE_GPU = make_topology(1, 1)


def arrivals_file(tmp_path, lines, header="arrival_s,trace_index"):
    path = tmp_path / "arrivals.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def test_the_trace_own_batch_served_at_once_costs_what_replay_says(small_trace, tmp_path):
    """Both recorded requests arriving at t = 0 with room for both prompts: the served
    steps hold exactly the trace's steps (prefill of both, then their decodes), so each
    step's latency equals replay's for the same step on the same 1-GPU cluster."""
    path = arrivals_file(tmp_path, ["0,0", "0,1"])
    result = serve(ServeConfig(trace=small_trace, topology=ONE_GPU, policy="token-drop",
                               arrivals=path))
    rep = replay(ReplayConfig(trace=small_trace, policies=("token-drop",),
                              topology=_yaml(tmp_path)))
    expected = rep.steps[rep.steps.policy == "token-drop"].step_latency_s.to_numpy()
    got = result.steps.step_latency_s.to_numpy()
    assert len(got) == open_trace(small_trace).num_steps
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # TTFT is the prefill step, TPOT the mean of the decode steps, for both requests
    for r in result.requests.itertuples():
        assert r.ttft_s == pytest.approx(expected[0])
        assert r.tpot_s == pytest.approx(expected[1:].mean())
        assert r.e2e_latency_s == pytest.approx(expected.sum())


def test_eplb_placement_reaches_the_served_steps(small_trace, tmp_path):
    """EPLB (8 redundant slots, planned per layer on the whole trace) changes the served
    steps' latencies on 8xH100; on one GPU, where every placement is the same, it changes
    nothing; redundant slots without EPLB are refused."""
    path = arrivals_file(tmp_path, ["0,0", "0,1"])

    def served(topology, placement, redundant):
        return serve(ServeConfig(trace=small_trace, topology=topology, policy="vanilla",
                                 arrivals=path, placement=placement,
                                 redundant_experts=redundant)).steps.step_latency_s.to_numpy()

    assert not np.allclose(served("8xH100", "eplb", 8), served("8xH100", "contiguous", 0),
                           rtol=1e-9)
    np.testing.assert_array_equal(served(ONE_GPU, "eplb", 0), served(ONE_GPU, "contiguous", 0))
    with pytest.raises(ServeError, match="needs placement eplb"):
        served("8xH100", "contiguous", 8)


def test_tensor_parallel_attention_over_the_whole_box_is_replays(small_trace, tmp_path):
    """attention_tp = 8 on 8xH100: one scheduler rank (the whole box); the trace's batch
    served at once costs, step for step, what replay with attention_tp = 8 says."""
    path = arrivals_file(tmp_path, ["0,0", "0,1"])
    result = serve(ServeConfig(trace=small_trace, topology="8xH100", policy="vanilla",
                               arrivals=path, attention_tp=8))
    assert result.schedule.num_ranks == 1
    rep = replay(ReplayConfig(trace=small_trace, policies=("vanilla",), topology="8xH100",
                              attention_tp=8))
    expected = rep.steps[rep.steps.policy == "vanilla"].step_latency_s.to_numpy()
    np.testing.assert_allclose(result.steps.step_latency_s.to_numpy(), expected, rtol=1e-12)
    with pytest.raises(ServeError, match="attention_tp = 3 must divide"):
        serve(ServeConfig(trace=small_trace, topology="8xH100", arrivals=path,
                          attention_tp=3))


def _yaml(tmp_path):
    """The 1-GPU test topology as a file, for replay (which takes names or paths)."""
    t = ONE_GPU
    path = tmp_path / "one.yaml"
    path.write_text(
        f"name: one\nnodes: 1\ngpus_per_node: 1\n"
        f"gpu: {{kind: {t.gpu.kind}, bf16_flops_per_s: {t.gpu.bf16_flops_per_s}, "
        f"hbm_bytes_per_s: {t.gpu.hbm_bytes_per_s}, memory_bytes: {t.gpu.memory_bytes}, "
        f"compute_efficiency: {t.gpu.compute_efficiency}, "
        f"memory_efficiency: {t.gpu.memory_efficiency}}}\n"
        f"nvlink: {{bw_bytes_per_s: {t.nvlink.bw_bytes_per_s}, latency_s: "
        f"{t.nvlink.latency_s}, efficiency: {t.nvlink.efficiency}}}\n")
    return str(path)


def test_stub_step_times_give_the_hand_computed_figures(small_trace, tmp_path):
    """Constant step C on one GPU, arrivals at 0 and 10 s (never overlapping): each
    request takes 1 prefill step and 3 decode steps."""
    c = 2.0 ** -5
    path = arrivals_file(tmp_path, ["0,0", "10,1"])
    result = serve(ServeConfig(trace=small_trace, topology=ONE_GPU, arrivals=path,
                               sla=Sla(ttft_s=c, tpot_s=c)), step_time=lambda batch: c)
    assert result.requests.ttft_s.tolist() == pytest.approx([c, c])
    assert result.requests.tpot_s.tolist() == pytest.approx([c, c])
    assert result.requests.output_tokens.tolist() == [4, 4]
    s = result.summary
    assert s["duration_s"] == pytest.approx(10 + 4 * c)
    assert s["goodput_requests_per_s"] == pytest.approx(2 / (10 + 4 * c))
    assert s["gpu_utilisation"] == pytest.approx(8 * c / (10 + 4 * c))


def test_goodput_saturates_above_capacity(small_trace):
    """One slot, one output token, constant step C: capacity 1/C requests/s. At 4/C
    Poisson arrivals the queue grows, and every request served meets a loose SLA, so
    goodput over the run tends to 1/C (the first arrival's wait is the only loss)."""
    c = 2.0 ** -6
    n = 400
    result = serve(ServeConfig(trace=small_trace, topology=ONE_GPU, rate_per_s=4 / c,
                               num_requests=n, output_tokens=1,
                               scheduler=SchedulerConfig(max_seqs=1), sla=Sla(1e6, 1e6)),
                   step_time=lambda batch: c)
    s = result.summary
    first = result.requests.arrival_s.min()
    assert s["duration_s"] == pytest.approx(n * c)   # busy from the first arrival on
    assert s["goodput_requests_per_s"] == pytest.approx(1 / c)
    waiting = result.steps.waiting.to_numpy()
    # while arrivals last (~n/4 steps) the queue grows by about 4 − 1 = 3 a step
    assert waiting[80] > waiting[40] > waiting[10]
    assert 2 < (waiting[80] - waiting[40]) / 40 < 4
    assert first > 0


def test_a_strict_sla_is_missed_under_overload(small_trace):
    c = 2.0 ** -6
    result = serve(ServeConfig(trace=small_trace, topology=ONE_GPU, rate_per_s=4 / c,
                               num_requests=200, output_tokens=1,
                               scheduler=SchedulerConfig(max_seqs=1), sla=Sla(10 * c, 1.0)),
                   step_time=lambda batch: c)
    # request i (arrivals ~ i C/4) finishes at about (i+1) C: TTFT ~ 3iC/4 > 10 C past i ~ 13
    assert result.summary["sla_attainment"] < 0.2


def test_same_seed_same_outputs(small_trace):
    config = ServeConfig(trace=small_trace, topology=make_topology(1, 2), policy="macs",
                         rate_per_s=50.0, num_requests=5, output_tokens=6, seed=3)
    a, b = serve(config), serve(config)
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.steps, b.steps)
    assert a.summary == b.summary or all(
        a.summary[k] == b.summary[k] or (math.isnan(a.summary[k]) and math.isnan(b.summary[k]))
        for k in a.summary)
    # more output than recorded: the recorded decode rows are cycled, and it is recorded
    assert a.replay["decode_tokens_with_cycled_routing"] == 5 * (6 - 1 - 3)
    assert (a.requests.tpot_s > 0).all() and (a.requests.ttft_s > 0).all()
    assert 0 < a.summary["gpu_utilisation"] < 1
    assert 0 <= a.summary["straggler_share"] < 1


def test_the_step_cache_changes_nothing_but_time(small_trace):
    """At a low rate requests are mostly served alone, so identical steps repeat; with
    and without the cache every table is equal, bit for bit."""
    config = ServeConfig(trace=small_trace, topology=ONE_GPU, rate_per_s=2.0, num_requests=6,
                         output_tokens=5, seed=1)
    cached = serve(config)
    fresh = serve(dataclasses.replace(config, step_cache=False))
    assert cached.replay["step_cache"]["hits"] > 0
    assert cached.replay["step_cache"]["misses"] < len(cached.steps)
    pd.testing.assert_frame_equal(cached.requests, fresh.requests, check_exact=True)
    pd.testing.assert_frame_equal(cached.steps, fresh.steps, check_exact=True)


def test_different_seeds_draw_different_arrivals():
    a = poisson_arrivals(10.0, 50, 3, seed=0)
    b = poisson_arrivals(10.0, 50, 3, seed=1)
    assert [x.arrival_s for x in a] != [x.arrival_s for x in b]
    assert [x.trace_index for x in a[:4]] == [0, 1, 2, 0]
    gaps = np.diff([0.0] + [x.arrival_s for x in poisson_arrivals(10.0, 20000, 1, seed=0)])
    assert gaps.mean() == pytest.approx(0.1, rel=0.03)


@pytest.mark.parametrize("rate", [0.0, -1.0, math.inf, math.nan])
def test_rate_must_be_positive(small_trace, rate):
    with pytest.raises(ServeError, match="rate_per_s"):
        serve(ServeConfig(trace=small_trace, topology=ONE_GPU, rate_per_s=rate))


def test_an_empty_trace_is_refused(tmp_path):
    path = write_trace(tmp_path / "empty.mtrace", SMALL_MODEL, {"source": "test"}, [])
    with pytest.raises(ServeError, match="no request with prompt"):
        serve(ServeConfig(trace=path, topology=ONE_GPU))


@pytest.mark.parametrize("text, says", [
    ("", "empty; expected a header"),
    ("time,request_id\n0,0\n", "line 1: header must be"),
    ("arrival_s,request_id\n", "no requests after the header"),
    ("arrival_s,request_id\n0,0\nsoon,1\n", 'line 3: "arrival_s" must be a finite number'),
    ("arrival_s,request_id\n-1,0\n", 'line 2: "arrival_s"'),
    ("arrival_s,request_id\ninf,0\n", 'line 2: "arrival_s"'),
    ("arrival_s,request_id\n0,zero\n", 'line 2: "request_id" must be an integer'),
    ("arrival_s,request_id\n0,77\n", 'line 2: "request_id" 77 is not in the trace'),
    ("arrival_s,trace_index\n0,2\n", r'line 2: "trace_index" must be in \[0, 2\)'),
    ("arrival_s,request_id\n0,0,1\n", "line 2: expected 2 fields"),
])
def test_malformed_arrivals_files_name_file_line_and_field(tmp_path, text, says):
    path = tmp_path / "a.csv"
    path.write_text(text)
    with pytest.raises(ServeError, match=says) as e:
        read_arrivals(path, [0, 1])
    assert str(path) in str(e.value)


def test_arrivals_file_need_not_be_sorted(tmp_path):
    path = arrivals_file(tmp_path, ["1.5,1", "0.5,0"], header="arrival_s,request_id")
    got = read_arrivals(path, [0, 1])
    assert [(a.arrival_s, a.trace_index) for a in got] == [(1.5, 1), (0.5, 0)]


def test_report_files_and_safety(small_trace, tmp_path):
    result = serve(ServeConfig(trace=small_trace, topology=ONE_GPU, rate_per_s=5.0,
                               num_requests=3), step_time=lambda b: 0.01)
    report = write_serve_report(result, tmp_path / "out", ["macssim", "serve"])
    assert set(report.files) == {"requests.csv", "steps.csv", "summary.csv", "run.json"}
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["config"]["rate_per_s"] == 5.0 and run["seed"] == 0
    assert len(pd.read_csv(tmp_path / "out" / "requests.csv")) == 3
    again = write_serve_report(result, tmp_path / "out", ["macssim", "serve"])
    assert again.directory.name == "out-2"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(Exception, match="not a macssim report"):
        write_serve_report(result, mine, ["macssim", "serve"])
    assert (mine / "notes.txt").read_text() == "keep"


def test_cli_serve_prints_and_writes(small_trace, tmp_path):
    out = tmp_path / "rep"
    r = CliRunner().invoke(main, ["serve", "--trace", str(small_trace), "--topology", "8xH100",
                                  "--rate", "40", "--requests", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "ttft ms" in r.output and "goodput" in r.output and "report:" in r.output
    assert (out / "requests.csv").is_file()


def test_cli_bad_arrivals_is_one_line(small_trace, tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("arrival_s,request_id\nx,0\n")
    r = CliRunner().invoke(main, ["serve", "--trace", str(small_trace), "--arrivals", str(path),
                                  "--out", str(tmp_path / "rep")])
    assert r.exit_code == 1
    assert "line 2" in r.output and "arrival_s" in r.output
    assert not (tmp_path / "rep").exists()


def test_cli_rate_zero_is_a_usage_error(small_trace, tmp_path):
    r = CliRunner().invoke(main, ["serve", "--rate", "0", "--out", str(tmp_path / "rep")])
    assert r.exit_code == 2 and "--rate" in r.output
