"""``count_tokens`` against a count by Python sets: a token sends one copy to each GPU and
each node it needs, however many of its experts sit there."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from macssim.cost._collectives import count_tokens


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
