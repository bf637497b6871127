"""Replay and its report, end to end on a small synthetic trace."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from macssim import MacssimError, PolicyError, TopologyError, TraceError
from macssim.cli import main
from macssim.replay import ReplayConfig, replay
from macssim.report import write_report


def config(trace, **over):
    values = dict(trace=trace, policies=("macs", "expanded-drop", "token-drop", "vanilla"),
                  topology="8xH100")
    values.update(over)
    return ReplayConfig(**values)


@pytest.fixture(scope="module")
def result(small_trace):
    return replay(config(small_trace))


def test_every_policy_replays_every_step_and_layer(result):
    assert result.policies == ("macs", "expanded-drop", "token-drop", "vanilla")
    assert len(result.layers) == 4 * 4 * 4          # policies × steps × layers
    assert len(result.steps) == 4 * 4
    assert set(result.phases.policy) == set(result.policies)


def test_kept_assignments_agree_across_records(result, small_trace):
    """The per-layer records, the GPU load heatmap and the drop tally count the same
    kept assignments (the router's slots kept plus the local experts Expanded Drop and
    MACS add); vanilla keeps all T·k."""
    from macssim.trace import open_trace

    tokens = sum(s.num_tokens for s in open_trace(small_trace))
    for policy in result.policies:
        lay = result.layers[result.layers.policy == policy]
        kept = int(lay.kept_assignments.sum())
        assert kept == int(result.gpu_load[policy].sum())
        drops = result.drops[result.drops.policy == policy]
        assert kept == int(drops.assignments.sum() - drops.dropped_assignments.sum()
                           + drops.rerouted_assignments.sum())
        assert int(drops.assignments.sum()) == tokens * 4 * 4  # T · k · layers
    vanilla = result.layers[result.layers.policy == "vanilla"]
    assert (vanilla.dropped_assignments == 0).all()


def straggler_within_moe_layer(layers, num_gpus):
    """0 <= straggler_delay_s <= (G-1)/G · moe_latency_s <= moe_latency_s, layer by layer."""
    assert len(layers)
    assert (layers.straggler_delay_s >= 0).all()
    bound = layers.moe_latency_s * (num_gpus - 1) / num_gpus
    assert (layers.straggler_delay_s <= bound * (1 + 1e-12)).all()


def test_straggler_delay_lies_within_the_moe_layer(result, small_trace):
    """On every layer of every step: 0 <= straggler_delay_s <= moe_latency_s, on one node
    and on two (16xH100), decode steps included."""
    straggler_within_moe_layer(result.layers, 8)
    two_nodes = replay(config(small_trace, policies=("vanilla", "token-drop"),
                              topology="16xH100"))
    decode = two_nodes.layers[two_nodes.layers.kind == "decode"]
    assert set(decode.step) == {1, 2, 3}
    straggler_within_moe_layer(decode, 16)
    straggler_within_moe_layer(two_nodes.layers, 16)
    share = decode.straggler_delay_s.sum() / decode.moe_latency_s.sum()
    assert 0 <= share <= 1


def test_replay_is_deterministic(small_trace, result):
    again = replay(config(small_trace))
    assert again.layers.equals(result.layers)
    assert again.steps.equals(result.steps)


def test_worker_processes_give_the_same_frames_in_the_same_order(small_trace, result):
    parallel = replay(config(small_trace, jobs=2))
    assert parallel.layers.equals(result.layers)
    assert parallel.steps.equals(result.steps)
    assert parallel.phases.equals(result.phases)
    assert parallel.costs == result.costs


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_routing_equal_to_an_earlier_policys_is_simulated_once(small_trace, result,
                                                                 monkeypatch, jobs):
    """Decode steps route as vanilla under every policy: each is simulated once and its
    result serves all four policies, with frames equal to simulating every policy (the
    fixture's run, and a run with the twin test switched off)."""
    import macssim.replay._run as run

    calls = []
    real = run.simulate_step

    def counting(*args, **kwargs):
        calls.append(kwargs["step_index"])
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "simulate_step", counting)
    twins = replay(config(small_trace, jobs=jobs))
    if jobs == 1:
        steps = result.steps
        decode = sorted(set(steps.step[steps.kind == "decode"]))
        assert decode and all(calls.count(i) == 1 for i in decode)
        assert len(calls) < len(steps)
    monkeypatch.setattr(run, "_same_routing", lambda a, b: False)
    every = replay(config(small_trace, jobs=jobs))
    for other in (result, every):
        assert twins.layers.equals(other.layers)
        assert twins.steps.equals(other.steps)
        assert twins.phases.equals(other.phases)


def test_policies_plan_on_one_torch_thread_and_the_count_is_restored(small_trace,
                                                                       monkeypatch):
    """Small per-step tensors: replay runs torch on one intra-op thread, then gives the
    caller's setting back (also after an error)."""
    import torch

    import macssim.replay._run as run

    seen = []
    real = run.plans_for_step

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "plans_for_step", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        replay(config(small_trace, policies=("token-drop",), max_steps=2))
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
        with pytest.raises(MacssimError):
            replay(config(small_trace, topology="no-such-topology"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_piped_progress_is_plain_lines(small_trace, tmp_path):
    res = CliRunner().invoke(main, ["replay", "--trace", str(small_trace), "--policy",
                                    "vanilla", "--steps", "2", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    # CliRunner's stderr is not a terminal: "replay: done/total" lines, no bar.
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("replay: ")]
    assert lines and lines[-1] == "replay: 4/4 policy x step"


def test_token_drop_is_always_the_baseline(small_trace):
    res = replay(config(small_trace, policies=("vanilla",), max_steps=1))
    assert res.policies == ("vanilla", "token-drop")


def test_report_files_and_run_record(result, tmp_path):
    report = write_report(result, tmp_path / "rep", command_line=["macssim", "replay"])
    names = set(report.files)
    for f in ("summary.csv", "layers.csv", "steps.csv", "phases.parquet", "drops.csv",
              "load_heatmap.png", "straggler_per_layer.png", "latency_cdf.png", "run.json",
              "timeline-macs.json"):
        assert f in names
    run = json.loads((tmp_path / "rep" / "run.json").read_text())
    assert run["seed"] == 0 and len(run["trace_sha256"]) == 64
    assert run["command_line"] == ["macssim", "replay"]
    summary = report.summary[report.summary.kind == "all"].set_index("policy")
    assert summary.loc["token-drop", "moe_latency_mean_s_vs_token_drop"] == 1.0
    # Ratios are what they say: the policy's figure over token-drop's.
    ratio = summary.loc["macs", "moe_latency_mean_s"] / summary.loc["token-drop",
                                                                   "moe_latency_mean_s"]
    assert summary.loc["macs", "moe_latency_mean_s_vs_token_drop"] == pytest.approx(ratio)
    timeline = json.loads((tmp_path / "rep" / "timeline-macs.json").read_text())
    assert any(e.get("ph") == "X" for e in timeline["traceEvents"])


def test_summary_matches_layer_records(result, tmp_path):
    report = write_report(result, tmp_path / "rep", command_line=[])
    summary = report.summary.set_index(["policy", "kind"])
    assert set(summary.index.get_level_values("kind")) == {"all", "prefill", "decode"}
    for policy in result.policies:
        for kind in ("all", "prefill", "decode"):
            lay = result.layers[result.layers.policy == policy]
            if kind != "all":
                lay = lay[lay.kind == kind]
            assert summary.loc[(policy, kind), "straggler_delay_mean_s"] == pytest.approx(
                lay.straggler_delay_s.mean())
            assert summary.loc[(policy, kind), "moe_latency_p99_s"] == pytest.approx(
                np.percentile(lay.moe_latency_s, 99))
    # Ratios compare rows of the same kind.
    for kind in ("prefill", "decode"):
        ratio = (summary.loc[("macs", kind), "moe_latency_mean_s"]
                 / summary.loc[("token-drop", kind), "moe_latency_mean_s"])
        assert summary.loc[("macs", kind), "moe_latency_mean_s_vs_token_drop"] == (
            pytest.approx(ratio))


def test_bad_inputs_are_named(small_trace, tmp_path):
    with pytest.raises(PolicyError, match="unknown policy 'lottery'"):
        replay(config(small_trace, policies=("lottery",)))
    with pytest.raises(TopologyError, match="known"):
        replay(config(small_trace, topology="3xB200"))
    broken = tmp_path / "broken.mtrace"
    broken.write_bytes(small_trace.read_bytes()[:5000])
    with pytest.raises(TraceError, match="truncated"):
        replay(config(broken))


def test_cli_replay_prints_table_and_writes_report(small_trace, tmp_path):
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["replay", "--trace", str(small_trace), "--policy",
                                    "macs,token-drop", "--out", str(out), "--steps", "2"])
    assert res.exit_code == 0, res.output
    assert "straggler" in res.output and "macs" in res.output
    assert f"report: {out}" in res.output
    # The workload line, from the trace's own first two steps.
    from macssim.trace import open_trace

    steps = [s for _, s in zip(range(2), open_trace(small_trace), strict=False)]
    pre = [s for s in steps if s.kind == "prefill"]
    dec = [s for s in steps if s.kind == "decode"]
    requests = sum(len(set(s.request_id.tolist())) for s in pre)
    line = (f"workload: {requests} request{'s' if requests != 1 else ''}, "
            f"{sum(s.num_tokens for s in steps):,} tokens: 1 prefill step of "
            f"{pre[0].num_tokens:,} prompt tokens")
    if dec:
        live = len(set(dec[0].request_id.tolist()))
        line += f"; 1 decode step of {live} live sequence{'s' if live != 1 else ''}"
    assert line in res.output, res.output
    assert (out / "summary.csv").exists()
    import pandas as pd

    phases = pd.read_parquet(out / "phases.parquet")  # streamed during the replay
    assert set(phases.policy) == {"macs", "token-drop"} and set(phases.step) == {0, 1}
    assert (phases.end_s >= phases.start_s).all()
    assert not (out / "phases.csv").exists()
    # The streamed rows are the in-memory replay's rows, value for value.
    from macssim.replay import replay as run_replay

    held = run_replay(config(small_trace, policies=("macs", "token-drop"), max_steps=2)).phases
    pd.testing.assert_frame_equal(phases.astype({"policy": object, "phase": object}),
                                  held.reset_index(drop=True), check_dtype=False)


def test_cli_failure_leaves_no_report_directory(small_trace, tmp_path):
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["replay", "--trace", str(small_trace), "--policy",
                                    "macs,lottery", "--out", str(out)])
    assert res.exit_code == 2  # a usage error, found before anything is read
    assert "'--policy': unknown policy 'lottery'; known: vanilla" in res.output
    assert "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []


def test_cli_param_reaches_the_policy(small_trace, tmp_path):
    res = CliRunner().invoke(main, ["replay", "--trace", str(small_trace), "--policy", "macs",
                                    "--param", "macs.gamma=2", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--param" in res.output and "unknown parameter" in res.output
    assert "it takes capacity_factor, delta, rho" in res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, says", [
    (["--capacity-factor", "inf"], "'--capacity-factor': 'inf' is not a finite number > 0"),
    (["--capacity-factor", "nan"], "'--capacity-factor': 'nan' is not a finite number"),
    (["--capacity-factor", "0"], "'0' is not a finite number > 0"),
    (["--param", "macs.rho=abc"], "--param: 'macs.rho=abc': macs: \"rho\" must be a finite "
                                  "number >= 0 and <= 1e+06, got 'abc'"),
    (["--param", "macs.delta=-1"], '"delta" must be a finite number >= 0'),
    (["--param", "macs.rho=nan"], '"rho" must be a finite number >= 0 and <= 1e+06, got nan'),
    (["--param", "macs.capacity_basis=2"], "must be one of ['tokens', 'weight'], got 2"),
    (["--param", "lottery.x=1"], "unknown policy 'lottery'; known: vanilla"),
    (["--device", "tpu"], "'--device': 'tpu' is not one of 'cpu', 'cuda'"),
    (["--seed", "-1"], "'--seed'"),
    (["--seed", str(10**30)], "'--seed'"),
    (["--steps", str(10**30)], "'--steps'"),
    (["--network-rtol", "nan"], "'--network-rtol': 'nan' is not a finite number >= 0 and < 1"),
])
def test_cli_refuses_bad_values_as_usage_errors(small_trace, tmp_path, args, says):
    res = CliRunner().invoke(main, ["replay", "--trace", str(small_trace), "--steps", "1",
                                    "--out", str(tmp_path / "r"), *args])
    assert res.exit_code == 2, res.output
    assert says in res.output and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []


def test_cli_cuda_without_cuda_is_a_usage_error(small_trace, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = CliRunner().invoke(main, ["replay", "--trace", str(small_trace), "--device", "cuda",
                                    "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "'--device': cuda: no CUDA GPU is visible" in res.output
    assert "CUDA is not available" in res.output
    with pytest.raises(PolicyError, match="CUDA is not available"):
        replay(config(small_trace, device="cuda"))
    with pytest.raises(PolicyError, match='"device" must be cpu or cuda'):
        replay(config(small_trace, device="tpu"))


@pytest.mark.parametrize("over, says", [
    (dict(capacity_factor=float("inf")), '"capacity_factor" must be a finite number > 0'),
    (dict(policy_params={"macs": {"rho": float("nan")}}), '"rho" must be a finite number'),
    (dict(max_steps=0), '"max_steps" must be an integer >= 1'),
    (dict(seed=-1), '"seed" must be an integer >= 0'),
    (dict(network_rtol=1.0), '"network_rtol" must be a finite number >= 0 and < 1'),
    (dict(alltoall="mpi"), '"alltoall" must be one of nccl, deepep-normal'),
])
def test_library_config_is_validated(small_trace, over, says):
    from macssim import MacssimError

    with pytest.raises(MacssimError) as err:
        replay(config(small_trace, **over))
    assert says in str(err.value)


def test_an_id_only_trace_replays_with_policies_that_need_no_scores(small_trace, tmp_path):
    """vLLM/SGLang imports carry expert ids only: vanilla runs, the added token-drop
    baseline keeps the first C tokens, and a rerouting policy says what it lacks."""
    from macssim.trace import TraceWriter, open_trace

    source = open_trace(small_trace)
    ids_only = tmp_path / "ids.mtrace"
    fields = ("modality", "request_id", "position", "topk_ids")
    with TraceWriter(ids_only, source.model, {"source": "test"}, fields=fields) as w:
        for s in source:
            w.write(type(s)(index=s.index, kind=s.kind, modality=s.modality,
                            request_id=s.request_id, position=s.position,
                            topk_ids=s.topk_ids))
    res = replay(config(ids_only, policies=("vanilla",)))
    assert res.policies == ("vanilla", "token-drop")
    assert res.policy_params["token-drop"]["drop_policy"] == "position"
    assert (res.layers[res.layers.policy == "vanilla"].dropped_assignments == 0).all()
    # Gate and semantic mass cannot be measured from ids: n/a (NaN), never a made-up 0.
    from macssim.report import summarize

    table = summarize(res.layers, res.steps, res.drops, res.policies)
    assert table.dropped_gate_mass_frac.isna().all()
    assert table.dropped_semantic_mass_frac.isna().all()
    assert table.dropped_assignments_frac.notna().all()
    with pytest.raises(PolicyError, match="needs router scores"):
        replay(config(ids_only, policies=("expanded-drop",)))


@pytest.mark.parametrize("engine", ["nccl", "deepep-normal", "deepep-ll", "ideal"])
def test_each_alltoall_engine_replays_on_two_nodes(small_trace, engine):
    res = replay(config(small_trace, policies=("token-drop",), topology="16xH100",
                        max_steps=2, alltoall=engine))
    assert res.config.alltoall == engine
    assert res.config.to_dict()["alltoall"] == engine
    layers = res.layers
    assert np.isfinite(layers[["moe_latency_s", "straggler_delay_s", "layer_latency_s"]]
                       .to_numpy()).all()
    assert (layers.moe_latency_s > 0).all()
    straggler_within_moe_layer(layers, 16)
    assert np.isfinite(res.steps.step_latency_s).all()


def test_alltoall_defaults_to_the_topology_and_is_recorded(result, small_trace, tmp_path):
    assert result.config.alltoall == "nccl"  # 8xH100 sets none: nccl
    res = CliRunner().invoke(main, ["replay", "--trace", str(small_trace), "--policy",
                                    "token-drop", "--out", str(tmp_path / "r"), "--steps", "1",
                                    "--alltoall", "deepep-ll"])
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["config"]["alltoall"] == "deepep-ll"
    bad = CliRunner().invoke(main, ["replay", "--trace", str(small_trace), "--alltoall", "mpi",
                                    "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "--alltoall" in bad.output


def test_fp8_experts_replay_is_faster_and_recorded(result, small_trace, tmp_path):
    """--precision fp8-experts on 8xH100 completes; its MoE latency is below bf16's (the
    module's bf16 replay of the same trace), and run.json records the preset."""
    assert result.config.precision == "bf16"
    out = tmp_path / "fp8"
    res = CliRunner().invoke(main, ["replay", "--trace", str(small_trace), "--policy",
                                    "vanilla", "--out", str(out), "--precision",
                                    "fp8-experts"])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["precision"] == "fp8-experts"
    fp8 = replay(config(small_trace, policies=("vanilla",), precision="fp8-experts"))
    for policy in ("vanilla", "token-drop"):
        ours = fp8.layers[fp8.layers.policy == policy]
        theirs = result.layers[result.layers.policy == policy]
        assert ours.moe_latency_s.mean() < theirs.moe_latency_s.mean()
        assert ours.dispatch_bytes.sum() < theirs.dispatch_bytes.sum()
    with pytest.raises(MacssimError, match='"precision" must be one of bf16, fp8-experts, fp8'):
        replay(config(small_trace, precision="fp4"))
    bad = CliRunner().invoke(main, ["replay", "--trace", str(small_trace), "--precision",
                                    "fp4", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "--precision" in bad.output


def test_a_top_n_trace_reports_the_local_experts_it_could_not_rank(small_trace, result,
                                                                    tmp_path):
    """The fixture is written in format v2 with its default top-2k scores: expanded-drop
    and macs cannot rank a token's unscored local experts, and the replay says how often,
    in the result and run.json, never silently."""
    from macssim.cluster import RequestAssigner
    from macssim.trace import open_trace, unscored_experts_per_gpu

    trace = open_trace(small_trace)
    assert not trace.scores_complete
    gaps = result.score_gaps
    assert gaps["policies"] == ["macs", "expanded-drop"]
    expert_gpu = np.arange(trace.model.num_experts) * 8 // trace.model.num_experts
    want = of = 0
    assigner = RequestAssigner(8)
    for step in trace:
        g = unscored_experts_per_gpu(step, expert_gpu)
        at = g[:, np.arange(step.num_tokens), assigner.assign(step.request_id)]
        want += int(np.count_nonzero(at))
        of += at.size
    assert (gaps["token_layers"], gaps["of"]) == (want, of) and 0 < want < of
    report = write_report(result, tmp_path / "rep", command_line=["macssim", "replay"])
    assert json.loads((report.directory / "run.json").read_text())["score_gaps"] == gaps
    assert replay(config(small_trace, policies=("vanilla",))).score_gaps is None


def test_decode_steps_route_as_vanilla_unless_capped_too(small_trace, result):
    """CAI-MoE's code applies no capacity at sequence length 1: by default every policy's
    decode steps are vanilla's, drops included; capacity_in_decode caps them as well."""
    decode = result.layers[result.layers.kind == "decode"]
    cols = ["step", "layer", "kept_assignments", "dropped_assignments", "dispatch_bytes",
            "moe_latency_s"]
    want = decode[decode.policy == "vanilla"][cols].reset_index(drop=True)
    for name in ("macs", "expanded-drop", "token-drop"):
        got = decode[decode.policy == name][cols].reset_index(drop=True)
        assert got.equals(want), name
    capped = replay(config(small_trace, policies=("expanded-drop",), capacity_in_decode=True))
    kept = capped.layers[(capped.layers.kind == "decode")
                         & (capped.layers.policy == "expanded-drop")].kept_assignments
    # Under a cap tokens also take their GPU's other (scored) experts: C = 1 per expert.
    assert (kept.to_numpy() >= want.kept_assignments.to_numpy()).all()
    assert kept.sum() > want.kept_assignments.sum()
    with pytest.raises(MacssimError, match="capacity_in_decode"):
        replay(config(small_trace, capacity_in_decode="yes"))
