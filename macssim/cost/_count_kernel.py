"""``count_tokens`` as one compiled pass over a layer's kept assignments.

A token sends one copy to each GPU (and each node) it needs, however many of its experts
sit there; counting the distinct (token, GPU) and (token, node) pairs with numpy takes
several whole-array passes and [tokens × GPUs] temporaries per layer, which at 8 GPUs was
a third of a step's simulation. The loop marks each pair the first time it sees it.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["count_pairs"]


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
