"""One simulated step against closed forms and invariants: balanced layers have no
straggler, extra expert work on one GPU adds exactly its time, bytes and assignments are
conserved, nothing dropped is sent, bad inputs fail with clear errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from macssim import MacssimError, TopologyError
from macssim.cluster import LayerRouting, SimOptions, simulate_step
from macssim.cluster.metrics import PHASES
from macssim.cost._engines import (
    DEEPEP_COMBINE_FIXED_S,
    DEEPEP_FIXED_S,
    DEEPEP_LL_FIXED_S,
    DEEPEP_LL_NVLINK_EFFICIENCY,
    DEEPEP_NVLINK_EFFICIENCY,
    NCCL_FIT,
)
from macssim.placement import Placement, contiguous_placement

NO_EXTRAS = SimOptions(router_s=0.0, include_head=False)


def run(topo, model, ids, kept, token_gpu, *, kind="decode", position=None, modality=None,
        placement=None, options=NO_EXTRAS):
    num_tokens = len(token_gpu)
    layers = [LayerRouting(np.asarray(ids), np.asarray(kept))] * model.num_moe_layers
    return simulate_step(
        topo, model, placement or contiguous_placement(model.num_experts, topo.num_gpus),
        kind, token_gpu=np.asarray(token_gpu),
        position=np.full(num_tokens, 10) if position is None else position,
        modality=np.zeros(num_tokens, np.uint8) if modality is None else modality,
        layers=layers, options=options)


TILE, N_HALF, FIXED_S = 64, 128.0, 5 * 3e-6   # the documented GroupedGemm defaults


def expert_time_s(model, gpu, rows):
    """Independent grouped-GEMM cost of one GPU's experts, ``rows`` the kept rows of each
    active expert: each expert's rows padded up to 64, 6·h·I FLOPs per padded row at an
    efficiency of compute_efficiency · p / (p + 128); the weights of each active expert
    plus each real row's token in and out through HBM; 5 kernels of 3 µs fixed."""
    h, inter, bpe = model.hidden_size, model.expert_intermediate_size, 2
    compute = 0.0
    for m in rows:
        p = -(-m // TILE) * TILE
        efficiency = gpu.compute_efficiency * p / (p + N_HALF)
        compute += 6 * h * inter * p / (gpu.bf16_flops_per_s * efficiency)
    nbytes = 3 * h * inter * bpe * len(rows) + 2 * h * bpe * sum(rows)
    return FIXED_S + max(compute, nbytes / (gpu.hbm_bytes_per_s * gpu.memory_efficiency))


def local_routing(num_gpus, n):
    """n tokens per GPU, each routed to the two experts (2g, 2g+1) of its own GPU."""
    token_gpu = np.repeat(np.arange(num_gpus), n)
    ids = np.stack([2 * token_gpu, 2 * token_gpu + 1], axis=1)
    return token_gpu, ids


def test_equal_work_means_zero_straggler_delay(topo4, tiny_model):
    n = 64
    token_gpu, ids = local_routing(4, n)
    result = run(topo4, tiny_model, ids, np.ones_like(ids, bool), token_gpu)
    for layer in result.layers:
        assert layer.straggler_delay_s == 0.0
        assert layer.imbalance == 1.0
        assert layer.dispatch_bytes == 0.0
        assert layer.moe_latency_s == pytest.approx(
            expert_time_s(tiny_model, topo4.gpu, [n, n]), rel=1e-9)


def test_doubling_one_gpus_expert_work_adds_exactly_its_time(topo4, tiny_model):
    n = 512
    token_gpu, ids = local_routing(4, n)
    kept = np.ones_like(ids, bool)
    kept[:, 1] = False                      # base: one expert per token everywhere
    base = run(topo4, tiny_model, ids, kept, token_gpu)
    kept[token_gpu == 0, 1] = True          # GPU 0 now computes twice the assignments
    doubled = run(topo4, tiny_model, ids, kept, token_gpu)
    extra = (expert_time_s(tiny_model, topo4.gpu, [n, n])
             - expert_time_s(tiny_model, topo4.gpu, [n]))
    assert extra > 0
    for b, d in zip(base.layers, doubled.layers, strict=True):
        assert b.straggler_delay_s == 0.0
        assert d.layer_latency_s - b.layer_latency_s == pytest.approx(extra, rel=1e-9)
        assert d.straggler_delay_s == pytest.approx(extra * 3 / 4, rel=1e-9)
        assert d.imbalance == pytest.approx(2 * n / (5 * n / 4))
    assert doubled.step_latency_s - base.step_latency_s == pytest.approx(2 * extra, rel=1e-9)


def test_straggler_delay_counts_the_moe_layer_only(topo4, tiny_model):
    """Decode with every token on GPU 0 and its experts there too: the other GPUs have no
    attention and no rows (they pay the fixed expert kernels, shorter than GPU 0's
    attention), so they wait for GPU 0 through the whole MoE layer and no longer:
    straggler delay = 3/4 of the MoE latency, not 3/4 of the layer."""
    n = 64
    token_gpu = np.zeros(n, int)
    ids = np.tile([0, 1], (n, 1))
    result = run(topo4, tiny_model, ids, np.ones_like(ids, bool), token_gpu,
                 position=np.arange(n) + 100_000)  # long context: long attention
    moe = expert_time_s(tiny_model, topo4.gpu, [n, n])
    for layer in result.layers:
        assert layer.attention_s > FIXED_S           # the idle GPUs arrive before it ends
        assert layer.moe_latency_s == pytest.approx(moe, rel=1e-9)
        assert layer.straggler_delay_s == pytest.approx(moe * 3 / 4, rel=1e-9)
        assert 0 <= layer.straggler_delay_s <= layer.moe_latency_s


@pytest.mark.parametrize("engine", ["ideal", "nccl", "deepep-normal", "deepep-ll"])
def test_symmetric_all_to_all_has_no_straggler_and_the_alpha_beta_time(topo4, tiny_model,
                                                                        engine):
    model = dataclasses.replace(tiny_model, top_k=4)
    n = 32
    token_gpu = np.repeat(np.arange(4), n)
    ids = np.tile([0, 2, 4, 6], (4 * n, 1))  # one expert on every GPU
    result = run(topo4, model, ids, np.ones_like(ids, bool), token_gpu,
                 options=dataclasses.replace(NO_EXTRAS, alltoall=engine))
    m = n * model.hidden_size * 2                                  # bytes per GPU pair
    bw = topo4.nvlink.bw_bytes_per_s * topo4.nvlink.efficiency
    # one expert per GPU: deepep-ll's per-(token, expert) copies equal the per-GPU ones
    # (dispatch, combine): DeepEP's fixed costs and low-latency efficiencies differ by phase
    nccl = 1.0 / (1.0 + (NCCL_FIT.m_half / m) ** NCCL_FIT.p)
    ll = DEEPEP_LL_NVLINK_EFFICIENCY
    eff = {"ideal": (1.0, 1.0), "deepep-ll": (ll["dispatch"], ll["combine"]),
           "deepep-normal": (DEEPEP_NVLINK_EFFICIENCY,) * 2, "nccl": (nccl, nccl)}[engine]
    fixed = {"deepep-normal": (DEEPEP_FIXED_S, DEEPEP_COMBINE_FIXED_S),
             "deepep-ll": (DEEPEP_LL_FIXED_S,) * 2}.get(engine, (0.0, 0.0))
    a2a = sum(f + topo4.nvlink.latency_s + 3 * m / (bw * e)
              for f, e in zip(fixed, eff, strict=True))
    for layer in result.layers:
        assert layer.straggler_delay_s == pytest.approx(0.0, abs=1e-15)
        assert layer.dispatch_bytes == 4 * 3 * m
        assert layer.moe_latency_s == pytest.approx(
            a2a + expert_time_s(model, topo4.gpu, [4 * n]), rel=1e-9)


def reference_load(ids, kept, token_gpu, expert_to_gpu, num_gpus, token_bytes):
    """Slow twin: per-token loops for assignments and bytes."""
    assignments = np.zeros(num_gpus, int)
    sent = np.zeros((num_gpus, num_gpus))
    for t in range(len(token_gpu)):
        dests = set()
        for e, k in zip(ids[t], kept[t], strict=True):
            if k:
                assignments[expert_to_gpu[e]] += 1
                dests.add(int(expert_to_gpu[e]))
        for d in dests - {int(token_gpu[t])}:
            sent[token_gpu[t], d] += token_bytes
    return assignments, sent


def test_conservation_with_random_routing_and_drops(make_topo, tiny_model):
    topo = make_topo(2, 4)
    rng = np.random.default_rng(3)
    num_tokens = 300
    token_gpu = rng.integers(0, 8, num_tokens)
    ids = np.stack([rng.choice(8, 2, replace=False) for _ in range(num_tokens)])
    kept = rng.random(ids.shape) < 0.7
    ids[~kept & (rng.random(ids.shape) < 0.5)] = -1  # dropped entries may hold -1
    result = run(topo, tiny_model, ids, kept, token_gpu)
    placement = contiguous_placement(8, 8)
    want_assign, want_sent = reference_load(ids, kept, token_gpu, placement.expert_to_gpu, 8,
                                            tiny_model.hidden_size * 2)
    for layer in result.layers:
        rows = [r for r in result.gpu_layers if r.layer == layer.layer]
        assignments = np.array([r.expert_assignments for r in rows])
        assert assignments.tolist() == want_assign.tolist()
        assert assignments.sum() == kept.sum() == layer.kept_assignments
        assert layer.dropped_assignments == (~kept).sum()
        sent = np.array([r.dispatch_sent_bytes for r in rows])
        received = np.array([r.dispatch_received_bytes for r in rows])
        assert sent.tolist() == want_sent.sum(axis=1).tolist()
        assert received.tolist() == want_sent.sum(axis=0).tolist()
        assert sent.sum() == received.sum() == layer.dispatch_bytes


def test_nothing_dropped_is_sent(topo4, tiny_model):
    token_gpu = np.zeros(10, int)                 # every token on GPU 0
    ids = np.tile([0, 7], (10, 1))                # expert 0 on GPU 0, expert 7 on GPU 3
    kept = np.tile([True, False], (10, 1))        # the remote one is dropped
    result = run(topo4, tiny_model, ids, kept, token_gpu)
    assert all(layer.dispatch_bytes == 0.0 for layer in result.layers)
    table = result.phase_table
    comm = table[np.isin(table["phase"], [PHASES.index("dispatch"), PHASES.index("combine")])]
    assert (comm["end_s"] == comm["start_s"]).all()


def test_replicas_share_an_experts_tokens_by_token_index(topo4, tiny_model):
    slot_expert = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7])
    slot_gpu = np.array([0, 1, 0, 1, 1, 2, 2, 3, 3])
    placement = Placement(num_gpus=4, slot_expert=slot_expert, slot_gpu=slot_gpu)
    ids = np.tile([0, 1], (10, 1))
    kept = np.tile([True, False], (10, 1))
    result = run(topo4, tiny_model, ids, kept, np.full(10, 2), placement=placement)
    first = [r.expert_assignments for r in result.gpu_layers if r.layer == 0]
    assert first == [5, 5, 0, 0]


def test_vision_encoder_runs_on_prefill_only(topo4, tiny_model):
    model = dataclasses.replace(tiny_model, vision_flops_per_token=1e9)
    token_gpu, ids = local_routing(4, 8)
    modality = np.zeros(32, np.uint8)
    modality[token_gpu == 1] = 1                  # GPU 1 holds 8 image tokens
    args = (topo4, model, ids, np.ones_like(ids, bool), token_gpu)
    prefill = run(*args, kind="prefill", modality=modality, position=np.tile(np.arange(8), 4))
    decode = run(*args, kind="decode", modality=modality, position=np.tile(np.arange(8), 4))
    peak = topo4.gpu.bf16_flops_per_s * topo4.gpu.compute_efficiency
    assert prefill.vision_s == pytest.approx(8 * 1e9 / peak, rel=1e-12)
    assert decode.vision_s == 0.0
    assert prefill.step_latency_s - decode.step_latency_s == pytest.approx(prefill.vision_s)


def test_every_gpu_runs_every_phase_back_to_back(make_topo, tiny_model):
    topo = make_topo(2, 4)
    rng = np.random.default_rng(0)
    token_gpu = rng.integers(0, 8, 200)
    ids = np.stack([rng.choice(8, 2, replace=False) for _ in range(200)])
    result = run(topo, tiny_model, ids, np.ones_like(ids, bool), token_gpu,
                 options=SimOptions())
    table = np.sort(result.phase_table, order=["gpu", "start_s", "layer", "phase"])
    for g in range(8):
        mine = table[table["gpu"] == g]
        assert (mine["end_s"] >= mine["start_s"]).all()
        assert np.allclose(mine["start_s"][1:], mine["end_s"][:-1], rtol=0, atol=1e-15)
        per_layer = [mine[mine["layer"] == layer]["phase"].tolist() for layer in range(2)]
        names = ["dense", "attention", "router", "dispatch", "experts", "shared_experts",
                 "combine", "barrier"]  # no allreduce: data-parallel attention
        assert per_layer == [[PHASES.index(n) for n in names]] * 2
        assert mine[mine["layer"] == 2]["phase"].tolist() == [PHASES.index("head")]
    assert table["end_s"].max() == pytest.approx(result.step_latency_s, rel=1e-12)


def test_summary_metrics_add_up(topo4, tiny_model):
    token_gpu, ids = local_routing(4, 16)
    result = run(topo4, tiny_model, ids, np.ones_like(ids, bool), token_gpu,
                 options=SimOptions())
    assert result.step_latency_s == pytest.approx(
        sum(layer.layer_latency_s for layer in result.layers) + result.head_s)
    assert result.moe_share == pytest.approx(result.moe_latency_s / result.step_latency_s)
    assert result.tokens_per_s == pytest.approx(64 / result.step_latency_s)
    for layer in result.layers:
        assert layer.layer_latency_s == pytest.approx(layer.attention_s + layer.moe_latency_s)


@pytest.mark.parametrize("change, error, message", [
    (dict(placement=contiguous_placement(8, 8)), TopologyError, "placement is for 8 GPUs"),
    (dict(ids=np.full((4, 2), 8)), MacssimError, "holds expert 8 in a kept entry"),
    (dict(ids=np.zeros((5, 2), int), kept=np.ones((5, 2), bool)), MacssimError,
     "has 5 tokens, expected T = 4"),
    (dict(kept=np.ones((4, 3), bool)), MacssimError, "same 2-D shape"),
    (dict(token_gpu=np.array([0, 1, 2, 4])), TopologyError, "names GPU 4"),
    (dict(kind="train"), MacssimError, '"step_kind" is \'train\''),
    (dict(position=np.array([0, 1, -1, 2])), MacssimError, '"position" must be >= 0'),
    (dict(modality=np.array([0, 0, 9, 0])), MacssimError, '"modality" codes'),
])
def test_bad_inputs_fail_with_clear_errors(topo4, tiny_model, change, error, message):
    args = dict(ids=np.zeros((4, 2), int), kept=np.ones((4, 2), bool),
                token_gpu=np.arange(4), kind="decode", position=None, modality=None,
                placement=None)
    args.update(change)
    with pytest.raises(error, match=message):
        run(topo4, tiny_model, args.pop("ids"), args.pop("kept"), args.pop("token_gpu"), **args)


def test_wrong_number_of_layers(topo4, tiny_model):
    routing = LayerRouting(np.zeros((2, 2), int), np.ones((2, 2), bool))
    with pytest.raises(MacssimError, match="got 1 LayerRouting, model 'tiny' has 2"):
        simulate_step(topo4, tiny_model, contiguous_placement(8, 4), "decode",
                      token_gpu=np.zeros(2, int), position=np.zeros(2, int),
                      modality=np.zeros(2, np.uint8), layers=[routing])


def test_a_global_capacity_exchange_runs_before_dispatch_as_an_all_gather(topo4, tiny_model):
    """Each GPU all-gathers its exchange bytes: 3 transfers of b bytes from every GPU,
    every NVLink port carrying 3 of them each way: one b-byte flow's share of a port is a
    third, so the phase lasts latency + 3·b / (capacity · NCCL's size efficiency of b)."""
    from macssim.cost import NCCL_FIT

    n = 64
    token_gpu, ids = local_routing(4, n)
    b = 2.0e5
    routing = LayerRouting(ids, np.ones_like(ids, bool), exchange_bytes=np.full(4, b))
    result = simulate_step(topo4, tiny_model, contiguous_placement(8, 4), "decode",
                           token_gpu=token_gpu, position=np.full(4 * n, 10),
                           modality=np.zeros(4 * n, np.uint8),
                           layers=[routing] * tiny_model.num_moe_layers, options=NO_EXTRAS)
    table = result.phase_table
    ex = table[table["phase"] == PHASES.index("exchange")]
    assert len(ex) == 4 * tiny_model.num_moe_layers
    nv = topo4.nvlink
    eff = NCCL_FIT.f_inf / (1 + (NCCL_FIT.m_half / b) ** NCCL_FIT.p)
    expected = nv.latency_s + 3 * b / eff / (nv.bw_bytes_per_s * nv.efficiency)
    assert ex["end_s"] - ex["start_s"] == pytest.approx(np.full(len(ex), expected), rel=1e-9)
    # Dispatch starts where the exchange ends, on every GPU.
    disp = table[table["phase"] == PHASES.index("dispatch")]
    assert np.allclose(np.sort(disp["start_s"]), np.sort(ex["end_s"]), rtol=0, atol=1e-15)


def test_exchange_bytes_are_validated():
    with pytest.raises(MacssimError, match="exchange_bytes"):
        LayerRouting(np.zeros((2, 1), np.int64), np.ones((2, 1), bool),
                     exchange_bytes=np.array([-1.0, 2.0]))


def test_only_the_routers_slots_count_as_dropped(topo4, tiny_model):
    """Expanded Drop's plans carry the token's GPU's experts as extra candidate columns;
    a candidate not taken is no drop: only the first k columns count."""
    token_gpu = np.zeros(4, int)
    ids = np.array([[0, 7, 1, 2]] * 4)                     # k = 2 router slots, 2 extras
    kept = np.array([[True, False, True, False]] * 4)      # slot 2 dropped, one extra taken
    result = run(topo4, tiny_model, ids, kept, token_gpu)
    for layer in result.layers:
        assert layer.dropped_assignments == 4               # one router slot per token
        assert layer.kept_assignments == 8
