"""Capacity scope: what each needs, in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from macssim import PolicyError
from macssim.policies import get_policy


def _batch():
    # 6 tokens, 4 experts on 2 GPUs, k = 1; tokens 0-3 on GPU 0, 4-5 on GPU 1.
    scores = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 4 + [[0.1, 0.1, 0.7, 0.1]] * 2)
    return dict(scores=scores, top_k=1, placement=torch.tensor([0, 0, 1, 1]),
                token_gpu=torch.tensor([0, 0, 0, 0, 1, 1]))


def test_rank_scope_sizes_capacity_by_each_gpus_tokens():
    plan = get_policy("token-drop", scope="rank")(**_batch())
    # GPU 0: C = ceil(4·1/4) = 1, GPU 1: C = ceil(2·1/4) = 1: expert 0 keeps one of GPU
    # 0's four tokens, expert 2 one of GPU 1's two.
    assert plan.capacity.tolist() == [[1.0] * 4, [1.0] * 4]
    assert plan.kept[:, 0].tolist() == [True, False, False, False, True, False]
    assert plan.exchange_bytes is None


def test_global_scope_states_the_exchange_it_needs():
    b = _batch()
    plan = get_policy("token-drop", scope="global")(**b)
    C = math.ceil(6 * 1 / 4)  # 2
    assert plan.capacity.tolist() == [float(C)] * 4
    # Each GPU all-gathers its 4 demand counts (4 B) and the scores of its candidates
    # that could be admitted, min(demand, C) per expert (4 B): GPU 0 has 4 for expert 0
    # (sends 2), GPU 1 has 2 for expert 2 (sends 2).
    assert plan.exchange_bytes.tolist() == [4 * 4 + 4 * 2, 4 * 4 + 4 * 2]
    by_position = get_policy("token-drop", scope="global", drop_policy="position")(**b)
    assert by_position.exchange_bytes.tolist() == [16, 16]  # counts only


def test_scope_needs_token_gpu_and_says_so():
    b = _batch()
    with pytest.raises(PolicyError, match='"token_gpu"'):
        get_policy("expanded-drop")(**dict(b, token_gpu=None))
    with pytest.raises(PolicyError, match=r'"token_gpu" must be \[T\]'):
        get_policy("token-drop")(**dict(b, token_gpu=torch.zeros(5, dtype=torch.long)))
    with pytest.raises(PolicyError, match="scope"):
        get_policy("macs", scope="node")


def test_local_expert_table_lists_every_replica_once():
    from macssim.policies._scope import local_expert_table

    # Expert 0 on GPUs 0 and 1 (twice on 1), expert 1 on GPU 0, expert 2 on GPU 1;
    # GPU 2 holds nothing.
    table = local_expert_table(torch.tensor([0, 1, 2, 0, 0]), torch.tensor([0, 0, 1, 1, 1]), 3)
    assert table.tolist() == [[0, 1], [0, 2], [-1, -1]]


def test_a_replica_on_the_tokens_gpu_is_local_to_every_policy():
    """Expert 0 (primary GPU 0) has a replica on GPU 1: GPU 1's tokens may take it as a
    local candidate under expanded-drop and macs; without the table they may not."""
    from macssim.policies._scope import local_expert_table

    # 2 tokens on GPU 1, k = 1, both choose expert 2; expert 0 scores next.
    scores = torch.tensor([[0.3, 0.1, 0.6, 0.0], [0.3, 0.1, 0.6, 0.0]])
    placement = torch.tensor([0, 0, 1, 1])
    token_gpu = torch.tensor([1, 1])
    table = local_expert_table(torch.tensor([0, 1, 2, 3, 0]), torch.tensor([0, 0, 1, 1, 1]), 2)
    for name, extra in (("expanded-drop", {}),
                        ("macs", dict(entropy=torch.ones(2), modality=torch.zeros(2,
                                                                               dtype=torch.long)))):
        policy = get_policy(name)
        plain = policy(scores, top_k=1, placement=placement, token_gpu=token_gpu, **extra)
        repl = policy(scores, top_k=1, placement=placement, token_gpu=token_gpu,
                      local_experts=table, **extra)
        took = lambda plan: {int(e) for e, k in zip(plan.expert_ids.reshape(-1).tolist(),  # noqa: E731
                                                    plan.kept.reshape(-1).tolist(),
                                                    strict=True) if k}
        assert 0 not in took(plain), name
        assert 0 in took(repl), name


def test_local_tables_may_differ_per_layer():
    """[B, G, M]: layer 0 has expert 0's replica on GPU 1, layer 1 does not; a GPU-1
    token may take expert 0 locally in layer 0 only."""
    from macssim.placement import Placement
    from macssim.policies._scope import local_expert_tables

    def placed(slot_expert, slot_gpu):
        return Placement(num_gpus=2, slot_expert=np.array(slot_expert),
                         slot_gpu=np.array(slot_gpu))

    tables = local_expert_tables([placed([0, 1, 2, 3, 0], [0, 0, 1, 1, 1]),
                                  placed([0, 1, 2, 3], [0, 0, 1, 1])])
    assert tables.tolist() == [[[0, 1, -1], [0, 2, 3]], [[0, 1, -1], [2, 3, -1]]]
    scores = torch.tensor([[0.3, 0.1, 0.6, 0.0]] * 2).expand(2, 2, 4)
    plan = get_policy("expanded-drop")(scores, top_k=1, placement=torch.tensor([0, 0, 1, 1]),
                                       token_gpu=torch.tensor([1, 1]), local_experts=tables)
    kept = [{int(e) for e, k in zip(ids.reshape(-1).tolist(), kp.reshape(-1).tolist(),
                                    strict=True) if k}
            for ids, kp in zip(plan.expert_ids, plan.kept, strict=True)]
    assert 0 in kept[0] and 0 not in kept[1]
