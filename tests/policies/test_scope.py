"""Capacity scope: what each needs, in closed form."""

from __future__ import annotations

import math

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
