"""Which GPU runs each request's attention (data-parallel attention).

In expert-parallel serving (vLLM/SGLang "DP attention", DeepSeek's deployment) attention is
data-parallel: every GPU holds the full attention weights and serves whole requests, each
request's KV cache living on one GPU; only the MoE layers are spread over GPUs. A token's
dispatch therefore starts from its request's GPU.

The rule, as a DP scheduler balancing load applies it: whole requests, largest first
(most tokens in the step; ties by first appearance), each to the GPU with the fewest tokens
so far (ties: the lowest GPU id). This is greedy longest-processing-time-first packing:
within 4/3 of the best possible max load, and exact when requests are equal.
"""

from __future__ import annotations

import heapq

import numpy as np

from macssim._errors import MacssimError

__all__ = ["assign_requests_to_gpus", "RequestAssigner"]


def assign_requests_to_gpus(request_id: np.ndarray, num_gpus: int) -> np.ndarray:
    """GPU of every token of one step.

    Args:
        request_id: [T] int, the request each token belongs to.
        num_gpus: GPUs serving attention (the topology's ``num_gpus``).

    Returns:
        [T] int64 GPU ids; all tokens of a request on the same GPU.
    """
    return RequestAssigner(num_gpus).assign(request_id)


class RequestAssigner:
    """The same rule across the steps of a trace: a request keeps the GPU it was given
    (its KV cache is there); a new request goes to the GPU with the fewest tokens seen so
    far, counting every step's tokens of the requests already placed."""

    def __init__(self, num_gpus: int) -> None:
        if int(num_gpus) <= 0:
            raise MacssimError(f'"num_gpus" must be > 0, got {num_gpus}')
        self.num_gpus = int(num_gpus)
        self._gpu_of: dict[int, int] = {}
        self._load = [0] * self.num_gpus

    def assign(self, request_id: np.ndarray) -> np.ndarray:
        """[T] int64 GPU of each token; places the step's new requests first."""
        request_id = np.asarray(request_id)
        if request_id.ndim != 1:
            raise MacssimError(f'"request_id" must be 1-D [T], got shape {list(request_id.shape)}')
        if request_id.size == 0:
            return np.zeros(0, dtype=np.int64)
        ids, first, inverse, counts = np.unique(request_id, return_index=True,
                                                return_inverse=True, return_counts=True)
        order = np.lexsort((first, -counts)).tolist()
        gpu_of_unique = np.empty(ids.size, dtype=np.int64)
        new = []
        for i in order:
            gpu = self._gpu_of.get(int(ids[i]))
            if gpu is None:
                new.append(i)
                continue
            gpu_of_unique[i] = gpu
            self._load[gpu] += int(counts[i])
        heap = [(load, gpu) for gpu, load in enumerate(self._load)]
        heapq.heapify(heap)
        for i in new:
            load, gpu = heapq.heappop(heap)
            heapq.heappush(heap, (load + int(counts[i]), gpu))
            self._gpu_of[int(ids[i])] = gpu
            self._load[gpu] += int(counts[i])
            gpu_of_unique[i] = gpu
        return gpu_of_unique[inverse.reshape(-1)]
