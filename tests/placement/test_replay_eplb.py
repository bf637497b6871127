"""``macssim replay --placement eplb --redundant-experts N``: runs under every policy,
is recorded, and refuses what cannot be built."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from macssim import MacssimError, TopologyError
from macssim.cli import main
from macssim.placement import contiguous_placement, expert_loads_from_trace, gpu_loads
from macssim.replay import ReplayConfig, replay
from macssim.trace import open_trace

POLICIES = ("macs", "expanded-drop", "token-drop", "vanilla")


def _config(trace, **over):
    values = dict(trace=trace, policies=POLICIES, topology="8xH100", max_steps=2)
    values.update(over)
    return ReplayConfig(**values)


@pytest.fixture(scope="module")
def both(small_trace):
    return (replay(_config(small_trace)),
            replay(_config(small_trace, placement="eplb", redundant_experts=8)))


def test_every_policy_runs_on_the_eplb_placement(both):
    contiguous, eplb = both
    assert len(contiguous.placements) == len(eplb.placements) == 4   # one per MoE layer
    assert not any(p.is_replicated for p in contiguous.placements)
    for p in eplb.placements:
        assert p.slot_expert.size == 32 + 8
        assert set(p.slot_expert.tolist()) == set(range(32))
        assert (np.bincount(p.slot_gpu, minlength=8) == 5).all()
    assert set(eplb.policies) == set(contiguous.policies)
    assert eplb.config.to_dict()["placement"] == "eplb"
    assert eplb.config.to_dict()["redundant_experts"] == 8
    # Vanilla keeps every assignment on either placement: the same work, spread otherwise.
    assert (eplb.gpu_load["vanilla"].sum(axis=1) == contiguous.gpu_load["vanilla"].sum(axis=1)
            ).all()


def test_each_layer_is_balanced_on_its_own_loads(small_trace, both):
    """EPLB per layer, as DeepSeek's code computes it: each layer's placement is never
    worse than contiguous on that layer's loads, and vanilla's measured GPU load (every
    assignment kept, routed to replicas by the cluster) is spread no worse either."""
    contiguous, eplb = both
    loads = expert_loads_from_trace(open_trace(small_trace), range(2))
    for layer, p in enumerate(eplb.placements):
        assert gpu_loads(p, loads[layer]).max() <= gpu_loads(
            contiguous_placement(32, 8), loads[layer]).max() + 1e-9
    worst = lambda r: (r.gpu_load["vanilla"].max(axis=1) / r.gpu_load["vanilla"].mean(axis=1))  # noqa: E731
    assert worst(eplb).mean() < worst(contiguous).mean()


@pytest.mark.parametrize(("over", "error", "says"), [
    (dict(redundant_experts=8), MacssimError, "needs placement eplb"),
    (dict(placement="eplb", redundant_experts=3), TopologyError, "multiple of the 8 GPUs"),
    (dict(placement="random"), MacssimError, '"placement" must be one of'),
])
def test_what_cannot_be_built_is_refused(small_trace, over, error, says):
    with pytest.raises(error, match=says):
        replay(_config(small_trace, **over))


def test_cli_shows_the_placement_beside_the_policy(small_trace, tmp_path):
    out = tmp_path / "rep"
    res = CliRunner().invoke(main, ["replay", "--trace", str(small_trace), "--policy",
                                    "token-drop", "--steps", "1", "--placement", "eplb",
                                    "--redundant-experts", "8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "placement: eplb, 8 redundant slots" in res.output
    header = next(line for line in res.output.splitlines() if line.startswith("policy "))
    assert header.split()[:2] == ["policy", "placement"]
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["placement"] == "eplb" and run["config"]["redundant_experts"] == 8
