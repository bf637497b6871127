"""Token -> replica routing (``ExpertMap.route``): the replica on the token's GPU, else
on its node, else an even split; checked by hand and against a slow per-token twin."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from macssim.cluster import LayerRouting
from macssim.cluster._load import ExpertMap, layer_load
from macssim.placement import Placement

# 2 nodes x 2 GPUs. Expert 0: GPUs 0 and 3. Expert 1: GPU 1 only. Expert 2: GPUs 2 and 3.
# Expert 3: two replicas on GPU 0.
SLOT_EXPERT = np.array([0, 1, 2, 3, 0, 2, 3])
SLOT_GPU = np.array([0, 1, 2, 0, 3, 3, 0])
GPN = 2


def _map():
    return ExpertMap.from_placement(Placement(num_gpus=4, slot_expert=SLOT_EXPERT,
                                              slot_gpu=SLOT_GPU))


def twin(slot_expert, slot_gpu, expert, src_gpu, gpn):
    """One assignment at a time: the replicas on the token's GPU, else on its node, else
    all of them; the n-th assignment that picks a given (set, expert) takes the set's
    (n mod size)-th slot in slot order."""
    seen: Counter = Counter()
    out = []
    for e, g in zip(expert.tolist(), src_gpu.tolist(), strict=True):
        mine = [s for s in range(len(slot_expert)) if slot_expert[s] == e]
        local = [s for s in mine if slot_gpu[s] == g]
        node = [s for s in mine if slot_gpu[s] // gpn == g // gpn]
        pool, key = (local, ("gpu", g)) if local else (node, ("node", g // gpn)) if node else (
            mine, ("all",))
        out.append(pool[seen[key, e] % len(pool)])
        seen[key, e] += 1
    return np.array(out)


def test_own_gpu_first():
    m = _map()
    # Expert 0 from GPU 0 -> slot 0 (GPU 0); from GPU 3 -> slot 4 (GPU 3).
    assert m.route(np.array([0, 0, 0]), np.array([0, 3, 0]), GPN).tolist() == [0, 4, 0]


def test_same_node_next():
    m = _map()
    # Expert 0 from GPU 1 (node 0) -> GPU 0's replica; from GPU 2 (node 1) -> GPU 3's.
    # Expert 1 from GPU 0 -> GPU 1 (same node); from GPU 3 -> GPU 1 (its only replica).
    got = m.route(np.array([0, 0, 1, 1]), np.array([1, 2, 0, 3]), GPN)
    assert m.slot_gpu[got].tolist() == [0, 3, 1, 1]


def test_even_split_when_no_replica_is_near():
    m = _map()
    # Expert 2 from node 0 (GPUs 0 and 1): no replica on the node, so its two replicas
    # (GPUs 2 and 3) alternate, whatever GPU of the node the tokens come from.
    got = m.route(np.full(7, 2), np.array([0, 1, 1, 0, 0, 1, 0]), GPN)
    gpus = m.slot_gpu[got]
    assert abs(int((gpus == 2).sum()) - int((gpus == 3).sum())) <= 1
    # Two replicas on the token's own GPU share its tokens evenly too.
    got = m.route(np.full(6, 3), np.zeros(6, dtype=np.int64), GPN)
    assert sorted(Counter(got.tolist()).values()) == [3, 3]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 5), st.data())
def test_matches_the_per_token_twin(nodes, gpn, num_experts, data):
    num_gpus = nodes * gpn
    extra = data.draw(st.lists(st.tuples(st.integers(0, num_experts - 1),
                                         st.integers(0, num_gpus - 1)), max_size=8))
    slot_expert = np.array(list(range(num_experts)) + [e for e, _ in extra])
    slot_gpu = np.array([data.draw(st.integers(0, num_gpus - 1)) for _ in range(num_experts)]
                        + [g for _, g in extra])
    n = data.draw(st.integers(0, 40))
    expert = np.array(data.draw(st.lists(st.integers(0, num_experts - 1), min_size=n,
                                         max_size=n)), dtype=np.int64)
    src = np.array(data.draw(st.lists(st.integers(0, num_gpus - 1), min_size=n, max_size=n)),
                   dtype=np.int64)
    m = ExpertMap.from_placement(Placement(num_gpus=num_gpus, slot_expert=slot_expert,
                                           slot_gpu=slot_gpu))
    assert m.route(expert, src, gpn).tolist() == twin(slot_expert, slot_gpu, expert, src,
                                                      gpn).tolist()


def test_layer_load_sends_local_replicas_nowhere():
    m = _map()
    # Four tokens, one per GPU, each to expert 0 (k = 1): GPU 0's and GPU 3's tokens stay
    # home; GPU 1's goes to GPU 0 (node 0), GPU 2's to GPU 3 (node 1).
    routing = LayerRouting(expert_ids=np.zeros((4, 1), dtype=np.int64),
                           kept=np.ones((4, 1), dtype=bool))
    load = layer_load(routing, np.arange(4), m, token_bytes=1.0, where="test",
                      gpus_per_node=GPN)
    expected = np.zeros((4, 4))
    expected[1, 0] = expected[2, 3] = 1.0
    assert (load.dispatch_bytes == expected).all()
    assert load.assignments.tolist() == [2, 0, 0, 2]
