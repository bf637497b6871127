"""``count_tokens`` against a count by Python sets: a token sends one copy to each GPU and
each node it needs, however many of its experts sit there."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from macssim.cost._collectives import count_routed, count_tokens


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 40), st.integers(1, 6),
       st.integers(0, 2**31 - 1))
def test_counts_equal_a_count_by_sets(nodes, per_node, num_tokens, k, seed):
    rng = np.random.default_rng(seed)
    g = nodes * per_node
    home = rng.integers(0, g, num_tokens)
    keep = rng.random((num_tokens, k)) < 0.8
    dst = rng.integers(0, g, (num_tokens, k))
    token, slot = np.nonzero(keep)
    got = count_tokens(num_tokens, token, home[token], dst[token, slot], g, per_node)
    pairs = np.zeros((g, g), np.int64)
    assignments = np.zeros((g, g), np.int64)
    node_tokens = np.zeros((g, nodes), np.int64)
    for t in range(num_tokens):
        gpus = {int(d) for d, kept in zip(dst[t], keep[t], strict=True) if kept}
        for d in gpus:
            pairs[home[t], d] += 1
        for n in {d // per_node for d in gpus}:
            node_tokens[home[t], n] += 1
        for d, kept in zip(dst[t], keep[t], strict=True):
            assignments[home[t], d] += int(kept)
    np.testing.assert_array_equal(got.pair_tokens, pairs)
    np.testing.assert_array_equal(got.assignment_pairs, assignments)
    np.testing.assert_array_equal(got.node_tokens, node_tokens)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 40), st.integers(1, 6),
       st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_counting_a_layers_routing_equals_routing_then_counting(nodes, per_node, num_tokens,
                                                                k, num_experts, seed):
    """``count_routed`` (one pass over [T, K]) gives the counts of looking up each kept
    entry's slot and GPU first and counting those, and each slot's rows."""
    rng = np.random.default_rng(seed)
    g = nodes * per_node
    home = rng.integers(0, g, num_tokens)
    ids = rng.integers(0, num_experts, (num_tokens, k))
    keep = rng.random((num_tokens, k)) < 0.8
    ids[~keep] = -1                      # dropped entries may hold anything
    expert_slot = rng.permutation(num_experts)
    slot_gpu = rng.integers(0, g, num_experts)
    bad, kept, slot_rows, got = count_routed(ids, keep, home, expert_slot, slot_gpu, g,
                                             per_node)
    token, j = np.nonzero(keep)
    slot = expert_slot[ids[token, j]]
    want = count_tokens(num_tokens, token, home[token], slot_gpu[slot], g, per_node)
    assert bad == -1 and kept == token.size
    np.testing.assert_array_equal(slot_rows, np.bincount(slot, minlength=num_experts))
    np.testing.assert_array_equal(got.pair_tokens, want.pair_tokens)
    np.testing.assert_array_equal(got.assignment_pairs, want.assignment_pairs)
    np.testing.assert_array_equal(got.node_tokens, want.node_tokens)


def test_counting_a_layer_finds_the_first_kept_entry_naming_no_expert():
    ids = np.array([[0, 9], [-1, 1]])
    expert_slot, slot_gpu = np.arange(2), np.array([0, 1])
    assert count_routed(ids, np.array([[True, False], [True, True]]), np.zeros(2, np.int64),
                        expert_slot, slot_gpu, 2, 2)[0] == 2      # the -1 at [1, 0]
    assert count_routed(ids, np.array([[True, True], [True, True]]), np.zeros(2, np.int64),
                        expert_slot, slot_gpu, 2, 2)[0] == 1      # the 9 at [0, 1]
