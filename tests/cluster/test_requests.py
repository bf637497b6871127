"""Data-parallel attention: whole requests, largest first, to the least-loaded GPU."""

from __future__ import annotations

import numpy as np
import pytest

from macssim import MacssimError
from macssim.cluster import RequestAssigner, assign_requests_to_gpus


def test_a_request_never_spans_gpus_and_equal_requests_balance_exactly():
    request_id = np.repeat(np.arange(16), 100)
    gpu = assign_requests_to_gpus(request_id, 8)
    for r in range(16):
        assert len(set(gpu[request_id == r].tolist())) == 1
    assert np.bincount(gpu, minlength=8).tolist() == [200] * 8


def test_largest_request_first_to_the_least_loaded_gpu():
    # Requests 10, 11, 12, 13, 14 hold 3, 5, 3, 4, 3 tokens. By hand, largest first (ties
    # by first appearance): 11 (5) -> g0; 13 (4) -> g1; 10 (3) -> g1 (loads 5, 4);
    # 12 (3) -> g0 (loads 5, 7); 14 (3) -> g1 (loads 8, 7).
    request_id = np.repeat([10, 11, 12, 13, 14], [3, 5, 3, 4, 3])
    gpu = assign_requests_to_gpus(request_id, 2)
    by_request = {r: int(gpu[request_id == r][0]) for r in (10, 11, 12, 13, 14)}
    assert by_request == {11: 0, 13: 1, 10: 1, 12: 0, 14: 1}
    assert np.bincount(gpu).tolist() == [8, 10]


def test_requests_keep_their_gpu_across_steps():
    assigner = RequestAssigner(4)
    prefill = assigner.assign(np.repeat(np.arange(4), [400, 300, 200, 100]))
    decode = assigner.assign(np.arange(4))
    assert decode.tolist() == [prefill[0], prefill[400], prefill[700], prefill[900]]
    newcomer = assigner.assign(np.array([9, 9]))
    assert newcomer.tolist() == [3, 3]  # the GPU that held the 100-token request


def test_bad_arguments():
    with pytest.raises(MacssimError, match="num_gpus"):
        assign_requests_to_gpus(np.arange(3), 0)
    with pytest.raises(MacssimError, match="1-D"):
        assign_requests_to_gpus(np.zeros((2, 2)), 2)
