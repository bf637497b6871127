"""Tensor-parallel attention against closed forms: one GPU's shard of the model, the ring
all-reduce's time on an idle node, the even split of a group's tokens for dispatch, and a
step whose attention and all-reduce phases are what those give."""

from __future__ import annotations

import numpy as np
import pytest

from macssim import MacssimError, TopologyError
from macssim.cluster import LayerRouting, SimOptions, simulate_step
from macssim.cluster._tensor_parallel import sequence_parallel_split, tensor_parallel_shard
from macssim.cluster.metrics import PHASES
from macssim.cost import ALLREDUCE_FIXED_S, NCCL_FIT, allreduce_s, attention_s
from macssim.cost._precision import Precision
from macssim.placement import contiguous_placement


def nccl_efficiency(m):
    return NCCL_FIT.f_inf / (1 + (NCCL_FIT.m_half / m) ** NCCL_FIT.p)


def test_shard_divides_heads_mlp_and_vocab_and_replicates_few_kv_heads(tiny_model):
    shard = tensor_parallel_shard(tiny_model, 4)
    assert shard.num_attention_heads == tiny_model.num_attention_heads // 4
    assert shard.num_kv_heads == 1                       # 2 KV heads over 4 GPUs: replicated
    assert shard.vocab_size == -(-tiny_model.vocab_size // 4)
    assert shard.hidden_size == tiny_model.hidden_size   # activations stay whole
    assert tensor_parallel_shard(tiny_model, 1) is tiny_model
    with pytest.raises(MacssimError, match="does not divide the 8 attention heads"):
        tensor_parallel_shard(tiny_model, 3)


def test_a_groups_tokens_split_evenly_over_its_gpus():
    token_gpu = np.array([0] * 7 + [1] * 3 + [5] * 5)      # groups of 4: group 0 has 10
    out = sequence_parallel_split(token_gpu, 4)
    assert (out // 4 == token_gpu // 4).all()               # tokens stay in their group
    # token i of a group of n goes to its GPU floor(i·4/n): n = 10 -> 3,2,3,2; n = 5 -> 2,1,1,1
    assert np.bincount(out, minlength=8).tolist() == [3, 2, 3, 2, 2, 1, 1, 1]
    assert (np.diff(out[:10]) >= 0).all()                   # contiguous slices in step order


@pytest.mark.parametrize("tp", [2, 4])
def test_ring_allreduce_on_an_idle_node_is_the_closed_form(topo4, tp):
    nbytes = 3e6
    done = allreduce_s(topo4, tp, np.full(4, nbytes))
    payload = 2 * (tp - 1) / tp * nbytes   # each GPU to its ring neighbour, disjoint links
    nv = topo4.nvlink
    expected = (ALLREDUCE_FIXED_S + nv.latency_s
                + payload / nccl_efficiency(payload) / (nv.bw_bytes_per_s * nv.efficiency))
    assert done == pytest.approx(np.full(4, expected), rel=1e-9)
    assert (allreduce_s(topo4, 1, np.full(4, nbytes)) == 0).all()


def _step(topo, model, tp, token_gpu):
    n = token_gpu.size
    ids = np.stack([np.arange(n) % 8, (np.arange(n) + 1) % 8], axis=1)
    layers = [LayerRouting(ids, np.ones_like(ids, bool))] * model.num_moe_layers
    return simulate_step(topo, model, contiguous_placement(8, topo.num_gpus), "decode",
                         token_gpu=token_gpu, position=np.full(n, 10),
                         modality=np.zeros(n, np.uint8), layers=layers,
                         options=SimOptions(router_s=0.0, include_head=False,
                                            attention_tp=tp))


def test_step_attention_is_the_shards_on_the_groups_tokens_then_an_allreduce(topo4,
                                                                            tiny_model):
    token_gpu = np.repeat(np.arange(4), [30, 10, 20, 20])
    result = _step(topo4, tiny_model, 2, token_gpu)
    table = result.phase_table
    shard = tensor_parallel_shard(tiny_model, 2)
    group_tokens = np.array([40.0, 40.0, 40.0, 40.0])
    # Every token is its own request here (no request ids; positions all 10 -> each token
    # starts a new request): context 11 per request, 11 positions attended per token.
    expected = attention_s(shard, topo4.gpu, group_tokens, 11.0 * group_tokens,
                           11.0 * group_tokens, Precision())
    att = table[(table["phase"] == PHASES.index("attention")) & (table["layer"] == 0)]
    assert att["end_s"] - att["start_s"] == pytest.approx(expected, rel=1e-12)
    ar = table[table["phase"] == PHASES.index("allreduce")]
    assert len(ar) == 4 * tiny_model.num_moe_layers
    # The group's 40 tokens are dispatched 20 from each of its two GPUs.
    assert [r.tokens for r in result.gpu_layers[:4]] == [20, 20, 20, 20]


def test_data_parallel_attention_has_no_allreduce_and_tp_must_fit_a_node(make_topo,
                                                                         tiny_model):
    topo = make_topo(1, 4)
    token_gpu = np.repeat(np.arange(4), 8)
    result = _step(topo, tiny_model, 1, token_gpu)
    assert not (result.phase_table["phase"] == PHASES.index("allreduce")).any()
    with pytest.raises(TopologyError, match="must divide the 4 GPUs per node"):
        _step(topo, tiny_model, 8, token_gpu)
