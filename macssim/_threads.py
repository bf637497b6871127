"""One torch thread while policies plan: their tensors are small (a step's [L, T, k]), so
a second intra-op thread only adds wake-ups and contention. Measured on the 2-core
development machine: a 16-token decode step's Token Drop plan took 3.3 ms with one
thread against 9.5-13.5 ms with two (same process, alternating); the default
``macssim serve`` run took 5-11 % less CPU time with one thread in three interleaved pairs
of runs, with identical results; the quick-start replay was no slower in one pair of runs
(its 8,615-token prefill included)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["one_torch_thread"]


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch's intra-op threads set to 1 inside, restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
