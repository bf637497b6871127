"""All-to-all-v over the flow network: the dispatch and combine of an MoE layer.

An all-to-all-v is a G×G byte matrix: ``bytes[s, d]`` leave GPU s for GPU d. Each GPU
joins when it is ready (its attention, or its experts, are done) and sends its row as one
flow per destination, all at once, each flow on its GPU pair's path. Nothing crosses the
network for the diagonal (a token whose experts sit on its own GPU) or for a zero entry.

When is a GPU done with the collective? For dispatch it needs every token sent to it
before its experts can run, so it waits for its own sends *and* its receives (as a DeepEP
or NCCL dispatch kernel returns). For combine it waits only for its own sends: the results
coming back to it are waited for by the layer's barrier, and a GPU's arrival at that
barrier is then the end of its own work, which is what the straggler metric measures.
"""

from __future__ import annotations

import numpy as np
import simpy

from macssim.cluster._flows import FlowNetwork
from macssim.cluster._graph import Routes

__all__ = ["AllToAll"]


class AllToAll:
    """One all-to-all-v in flight.

    Args:
        env: the simulation's environment.
        network: the flow network the routes' link indices refer to.
        routes: paths and latencies of every GPU pair.
        bytes_matrix: [G, G] float64, bytes from GPU s (row) to GPU d (column); the
            diagonal is ignored.
        wait_for_incoming: True for dispatch (done = sent and received), False for combine
            (done = sent).
    """

    def __init__(self, env: simpy.Environment, network: FlowNetwork, routes: Routes,
                 bytes_matrix: np.ndarray, *, wait_for_incoming: bool) -> None:
        num_gpus = bytes_matrix.shape[0]
        self._env, self._network, self._routes = env, network, routes
        self._bytes = bytes_matrix
        moving = bytes_matrix > 0
        np.fill_diagonal(moving, False)
        self._moving = moving
        self._wait = wait_for_incoming
        pending = moving.sum(axis=1)
        if wait_for_incoming:
            pending = pending + moving.sum(axis=0)
        # Per-GPU state in plain lists: a handful of scalar reads per event, where numpy's
        # per-element access would cost more than the arithmetic.
        self._pending: list[int] = pending.tolist()
        self._last_s = [-np.inf] * num_gpus
        self._started = [False] * num_gpus
        self._fired = [False] * num_gpus
        self._done = [env.event() for _ in range(num_gpus)]

    def join(self, gpu: int) -> simpy.Event:
        """GPU ``gpu`` is ready: start its flows; the event succeeds when it is done."""
        self._started[gpu] = True
        row = self._moving[gpu]
        if row.any():
            dst = np.flatnonzero(row)
            self._network.start(self._routes.links[gpu, dst], self._bytes[gpu, dst],
                                self._routes.latency_s[gpu, dst],
                                lambda idx, at_s: self._delivered(gpu, dst[idx], at_s))
        self._maybe_done(gpu)
        return self._done[gpu]

    def _delivered(self, src: int, dst: np.ndarray, at_s: np.ndarray) -> None:
        times = at_s.tolist()
        self._pending[src] -= len(times)
        self._last_s[src] = max(self._last_s[src], max(times))
        if self._wait:
            for gpu, t in zip(dst.tolist(), times, strict=True):
                self._pending[gpu] -= 1
                if t > self._last_s[gpu]:
                    self._last_s[gpu] = t
                self._maybe_done(gpu)
        self._maybe_done(src)

    def _maybe_done(self, gpu: int) -> None:
        if self._fired[gpu] or not self._started[gpu] or self._pending[gpu]:
            return
        self._fired[gpu] = True
        delay = self._last_s[gpu] - self._env.now
        event = self._done[gpu]
        if delay > 0:
            self._env.timeout(delay).callbacks.append(lambda _e: event.succeed())
        else:
            event.succeed()
