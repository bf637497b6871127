"""``count_tokens`` as one compiled pass over a layer's kept assignments.

A token sends one copy to each GPU (and each node) it needs, however many of its experts
sit there; counting the distinct (token, GPU) and (token, node) pairs with numpy takes
several whole-array passes and [tokens × GPUs] temporaries per layer, which at 8 GPUs was
a third of a step's simulation. The loop marks each pair the first time it sees it.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["count_layer", "count_pairs"]


@numba.njit(cache=True, nogil=True)
def count_pairs(num_tokens: int, token: np.ndarray, src_gpu: np.ndarray, dst_gpu: np.ndarray,
                num_gpus: int, gpus_per_node: int):
    """(pair_tokens [G, G], assignment_pairs [G, G], node_tokens [G, nodes]) int64: distinct
    tokens per (source, destination GPU), assignments per (source, destination GPU),
    distinct tokens per (source GPU, destination node)."""
    nodes = num_gpus // gpus_per_node
    pairs = np.zeros((num_gpus, num_gpus), dtype=np.int64)
    assignments = np.zeros((num_gpus, num_gpus), dtype=np.int64)
    node_tokens = np.zeros((num_gpus, nodes), dtype=np.int64)
    seen_gpu = np.zeros((num_tokens, num_gpus), dtype=np.bool_)
    seen_node = np.zeros((num_tokens, nodes), dtype=np.bool_)
    for i in range(token.shape[0]):
        t, s, d = token[i], src_gpu[i], dst_gpu[i]
        assignments[s, d] += 1
        if not seen_gpu[t, d]:
            seen_gpu[t, d] = True
            pairs[s, d] += 1
            n = d // gpus_per_node
            if not seen_node[t, n]:
                seen_node[t, n] = True
                node_tokens[s, n] += 1
    return pairs, assignments, node_tokens


@numba.njit(cache=True, nogil=True)
def count_layer(expert_ids: np.ndarray, kept: np.ndarray, token_gpu: np.ndarray,
                expert_slot: np.ndarray, slot_gpu: np.ndarray, num_gpus: int,
                gpus_per_node: int):
    """One pass over a layer's [T, K] routing when every expert has one slot: (flat index
    of the first kept entry naming no expert 0..E-1, or -1; kept assignments; rows per slot
    [S]; pair_tokens, assignment_pairs, node_tokens as ``count_pairs`` gives them).

    The same counts as routing the kept entries in token order and calling
    ``count_pairs``, without the [kept] index, expert, slot and GPU temporaries."""
    num_tokens, width = expert_ids.shape
    num_experts = expert_slot.shape[0]
    nodes = num_gpus // gpus_per_node
    slot_rows = np.zeros(slot_gpu.shape[0], dtype=np.int64)
    pairs = np.zeros((num_gpus, num_gpus), dtype=np.int64)
    assignments = np.zeros((num_gpus, num_gpus), dtype=np.int64)
    node_tokens = np.zeros((num_gpus, nodes), dtype=np.int64)
    seen_gpu = np.zeros(num_gpus, dtype=np.int64)      # last token (+1) seen per GPU
    seen_node = np.zeros(nodes, dtype=np.int64)
    total = 0
    for t in range(num_tokens):
        s = token_gpu[t]
        for j in range(width):
            if not kept[t, j]:
                continue
            e = expert_ids[t, j]
            if e < 0 or e >= num_experts:
                return t * width + j, total, slot_rows, pairs, assignments, node_tokens
            slot = expert_slot[e]
            d = slot_gpu[slot]
            total += 1
            slot_rows[slot] += 1
            assignments[s, d] += 1
            if seen_gpu[d] != t + 1:
                seen_gpu[d] = t + 1
                pairs[s, d] += 1
                n = d // gpus_per_node
                if seen_node[n] != t + 1:
                    seen_node[n] = t + 1
                    node_tokens[s, n] += 1
    return -1, total, slot_rows, pairs, assignments, node_tokens
