"""A flow-level network inside a SimPy environment.

Data moves as *flows*: a number of bytes crossing a fixed list of links. Links are shared
max-min fairly among the flows crossing them (progressive filling: raise every flow's
rate together until some link is full, freeze the flows on it, go on with the rest), and
the rates are recomputed whenever a flow starts or ends. A flow first transmits its bytes
at its (changing) rate, then arrives ``latency_s`` later, so a lone flow of S bytes on a
path with bottleneck bandwidth B and total latency L is delivered after exactly L + S/B.

The network owns no process. It keeps one pending timer: the moment the next flow finishes
transmitting under the current rates; a start or an end moves that timer. Flow state lives
in numpy arrays, so a recomputation is a handful of vectorised operations whatever the
number of flows.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence

import numpy as np
import simpy

__all__ = ["FlowNetwork", "max_min_rates"]

DeliveredCallback = Callable[[np.ndarray, np.ndarray], None]
"""``on_delivered(index, delivered_s)``: ``index`` [n] int64 positions of the finished flows
within the batch passed to ``FlowNetwork.start``; ``delivered_s`` [n] float64 the simulated
times they arrive (end of transmission + latency, now or later)."""

_SAME_LINK_RTOL = 1e-12
"""Links whose fair share is within this relative distance of the smallest saturate together."""
_SAME_END_RTOL = 1e-9
"""Flows whose transmission ends within this relative distance of the next end finish with it."""


def max_min_rates(links: np.ndarray, capacity_bytes_per_s: np.ndarray) -> np.ndarray:
    """Max-min fair rates of flows sharing links (progressive filling).

    Raise every flow's rate together; when a link is full, the flows crossing it keep the
    rate they have; the others go on rising. The result is the unique allocation in which
    no flow can gain without taking from a flow with a smaller or equal rate.

    Args:
        links: [F, P] int64, the links each flow crosses, padded with NL (no link).
        capacity_bytes_per_s: [NL] float64, capacity of each link.

    Returns:
        [F] float64 rates in bytes/s; ``inf`` for a flow that crosses no link.
    """
    if links.shape[0] <= _SMALL_PROBLEM:
        return _max_min_by_links(links, capacity_bytes_per_s)
    return _max_min_by_levels(links, capacity_bytes_per_s)


_SMALL_PROBLEM = 256
"""Up to this many flows, saturating links one by one in plain Python beats numpy's fixed
cost per call; above it, the vectorised level-by-level filling wins."""


def _max_min_by_levels(links: np.ndarray, capacity_bytes_per_s: np.ndarray) -> np.ndarray:
    """Vectorised progressive filling: one pass per distinct bottleneck level."""
    num_links = int(capacity_bytes_per_s.size)
    room = np.append(np.asarray(capacity_bytes_per_s, dtype=np.float64), np.inf)
    rate = np.full(links.shape[0], np.inf)
    idx = np.arange(links.shape[0])
    cur = links
    level = 0.0
    saturated = np.zeros(num_links + 1, dtype=bool)
    while idx.size:
        count = np.bincount(cur.ravel(), minlength=num_links + 1)[:num_links]
        used = np.flatnonzero(count)
        if used.size == 0:
            break  # the rest cross no link at all: unbounded
        share = room[used] / count[used]
        step = share.min()
        level += step
        room[used] -= step * count[used]
        full = used[share <= step * (1.0 + _SAME_LINK_RTOL)]
        room[full] = 0.0
        saturated[full] = True
        hit = saturated[cur].any(axis=1)
        rate[idx[hit]] = level
        idx, cur = idx[~hit], cur[~hit]
    return rate


def _max_min_by_links(links: np.ndarray, capacity_bytes_per_s: np.ndarray) -> np.ndarray:
    """The same allocation, one saturating link at a time.

    A link with ``room`` capacity left over its frozen flows and ``count`` flows still
    rising fills up at level ``room / count``; the link with the lowest such level is the
    next to saturate, and its rising flows freeze at that level. Freezing a flow can only
    raise the fill level of its other links (``room - level`` over ``count - 1`` is at least
    ``room / count`` while ``level <= room / count``), so a heap entry is a lower bound:
    a popped link whose level has risen is pushed back with its new level (lazy heap).
    """
    pad = int(capacity_bytes_per_s.size)
    rows = links.tolist()
    users: dict[int, list[int]] = {}
    for f, row in enumerate(rows):
        for link in row:
            if link != pad:
                users.setdefault(link, []).append(f)
    capacity = capacity_bytes_per_s.tolist()
    room = {link: capacity[link] for link in users}
    count = {link: len(flows) for link, flows in users.items()}
    heap = [(room[link] / c, link) for link, c in count.items()]
    heapq.heapify(heap)
    rate = [math.inf] * len(rows)
    frozen = [False] * len(rows)
    while heap:
        bound, link = heapq.heappop(heap)
        c = count[link]
        if not c:
            continue
        level = room[link] / c
        if level > bound * (1.0 + _SAME_LINK_RTOL):
            heapq.heappush(heap, (level, link))
            continue
        count[link] = 0
        for f in users[link]:
            if frozen[f]:
                continue
            frozen[f] = True
            rate[f] = level
            for other in rows[f]:
                if other != pad and other != link:
                    room[other] -= level
                    count[other] -= 1
    return np.array(rate)


class FlowNetwork:
    """Links of fixed capacity shared max-min fairly by the flows in flight.

    Args:
        env: the simulation's environment (time in seconds).
        capacity_bytes_per_s: [NL] capacity of each link; flows name links by index.
        end_rtol: 0 (the default) recomputes rates at every flow's end: exact. A value
            > 0 lets one recomputation also end the flows that would finish within
            ``end_rtol`` × (the time they have been running) of it: each is still
            delivered at the time its current rate gives, but its capacity goes back to
            the others that much early. This bounds the number of recomputations for
            thousands of flows at a relative error of about ``end_rtol``.
    """

    # Columns of the per-flow state table: one [F, 5] float64 array, so that dropping
    # ended flows is one compress instead of five.
    _REM, _RATE, _START, _BATCH, _SLOT = range(5)

    def __init__(self, env: simpy.Environment, capacity_bytes_per_s: Sequence[float],
                 *, end_rtol: float = 0.0) -> None:
        cap = np.asarray(capacity_bytes_per_s, dtype=np.float64)
        if cap.ndim != 1 or (cap.size and not (cap > 0).all()):
            raise ValueError('"capacity_bytes_per_s" must be a 1-D array of values > 0')
        if not 0.0 <= end_rtol < 1.0:
            raise ValueError(f'"end_rtol" must lie in [0, 1), got {end_rtol!r}')
        self._env = env
        self._cap = cap
        self._pad = int(cap.size)
        self._end_rtol = float(end_rtol)
        self._links = np.empty((0, 1), dtype=np.int64)
        self._state = np.empty((0, 5))
        self._to_end = np.empty(0)
        self._callbacks: dict[int, tuple[np.ndarray, DeliveredCallback, list[int]]] = {}
        self._next_batch = 0
        self._last_s = env.now
        self._timer = 0
        self._recompute_pending = False
        self.recomputations = 0
        """How many times rates were recomputed (for profiling)."""

    @property
    def active_flows(self) -> int:
        return int(self._state.shape[0])

    def start(self, links: np.ndarray, nbytes: np.ndarray, latency_s: np.ndarray,
              on_delivered: DeliveredCallback) -> None:
        """Start a batch of flows now.

        Rates are recomputed once per simulated instant, after every start of that instant
        (a zero-delay event), so GPUs joining a collective together cost one recomputation.

        Args:
            links: [F, P] int64, links of each flow, padded with NL.
            nbytes: [F] float64, bytes of each flow (>= 0).
            latency_s: [F] float64, latency added after transmission.
            on_delivered: called (possibly several times) as flows of the batch finish.
        """
        links = np.asarray(links, dtype=np.int64)
        nbytes = np.asarray(nbytes, dtype=np.float64)
        latency_s = np.asarray(latency_s, dtype=np.float64)
        if links.ndim != 2 or links.shape[0] != nbytes.size or nbytes.size != latency_s.size:
            raise ValueError("links [F, P], nbytes [F] and latency_s [F] must agree")
        if nbytes.size and (nbytes.min() < 0 or links.min() < 0 or links.max() > self._pad):
            raise ValueError("nbytes must be >= 0 and links must lie in [0, NL]")
        batch = self._next_batch
        self._next_batch += 1
        now = self._env.now
        moving = (nbytes > 0) & (links != self._pad).any(axis=1)
        count = int(moving.sum())
        self._callbacks[batch] = (latency_s, on_delivered, [count])
        if count:
            self._advance(now)
            slots = np.flatnonzero(moving)
            rows = np.zeros((count, 5))
            rows[:, self._REM] = nbytes[slots]
            rows[:, self._START] = now
            rows[:, self._BATCH] = batch
            rows[:, self._SLOT] = slots
            width = max(links.shape[1], self._links.shape[1])
            self._links = np.concatenate([_widen(self._links, width, self._pad),
                                          _widen(links[slots], width, self._pad)])
            self._state = np.concatenate([self._state, rows])
            self._timer += 1  # the pending end (if any) no longer holds
            if not self._recompute_pending:
                self._recompute_pending = True
                self._env.timeout(0.0).callbacks.append(self._recompute_now)
        if count < nbytes.size:
            slots = np.flatnonzero(~moving)
            on_delivered(slots, now + latency_s[slots])
        if not count:
            del self._callbacks[batch]

    def transfer(self, links: Sequence[int], nbytes: float, latency_s: float = 0.0
                 ) -> simpy.Event:
        """One flow; the event succeeds when it is delivered (value: delivery time)."""
        done = self._env.event()
        row = np.full((1, max(len(links), 1)), self._pad, dtype=np.int64)
        row[0, :len(links)] = links

        def delivered(_: np.ndarray, at_s: np.ndarray) -> None:
            _succeed_at(self._env, done, float(at_s[0]))

        self.start(row, np.array([nbytes]), np.array([latency_s]), delivered)
        return done

    # --- internals --------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Move every flow's remaining bytes forward to ``now`` at the current rates."""
        dt = now - self._last_s
        if dt > 0 and self._state.shape[0]:
            state = self._state
            state[:, self._REM] = np.maximum(state[:, self._REM] - state[:, self._RATE] * dt,
                                             0.0)
        self._last_s = now

    def _recompute_now(self, _event: simpy.Event) -> None:
        self._recompute_pending = False
        self._reschedule()

    def _reschedule(self, floor_rate: float = 0.0) -> None:
        """Recompute rates and set the timer to the next end.

        After flows end, flows slower than every ended flow keep their rates (in
        progressive filling they froze before the ended flows' links could matter), so
        only the others are recomputed, on the capacity the slower ones leave:
        ``floor_rate`` is the smallest rate among the ended flows (0: recompute all).
        """
        self._timer += 1
        state = self._state
        if not state.shape[0]:
            return
        self.recomputations += 1
        rate = state[:, self._RATE]
        fixed = rate < floor_rate * (1.0 - _SAME_LINK_RTOL) if floor_rate > 0 else None
        if fixed is not None and fixed.any():
            moving = ~fixed
            used = np.bincount(self._links[fixed].ravel(),
                               weights=np.repeat(rate[fixed], self._links.shape[1]),
                               minlength=self._pad + 1)[:self._pad]
            rate[moving] = max_min_rates(self._links[moving], np.maximum(self._cap - used, 0.0))
            if not (rate > 0).all():  # rounding starved a flow: recompute from scratch
                rate[:] = max_min_rates(self._links, self._cap)
        else:
            rate[:] = max_min_rates(self._links, self._cap)
        self._to_end = state[:, self._REM] / rate
        delay = float(self._to_end.min())
        timer = self._timer
        self._env.timeout(max(delay, 0.0)).callbacks.append(
            lambda _event: self._on_timer(timer, delay))

    def _on_timer(self, timer: int, delay: float) -> None:
        if timer != self._timer:
            return  # a start moved the timer since
        now = self._env.now
        to_end, state = self._to_end, self._state
        done = to_end <= delay * (1.0 + _SAME_END_RTOL)
        if self._end_rtol > 0:
            early = to_end - delay <= self._end_rtol * (now - state[:, self._START])
            end_s = np.where(done, now, self._last_s + to_end)
            done |= early
        ended = state[done]
        end_s = end_s[done] if self._end_rtol > 0 else np.full(ended.shape[0], now)
        keep = ~done
        state = state[keep]
        state[:, self._REM] = np.maximum(state[:, self._REM] - state[:, self._RATE] * delay,
                                         0.0)
        self._state, self._links = state, self._links[keep]
        self._last_s = now
        batches = ended[:, self._BATCH].astype(np.int64)
        slots = ended[:, self._SLOT].astype(np.int64)
        if batches.size == 1 or (batches == batches[0]).all():
            self._deliver(int(batches[0]), slots, end_s)
        else:
            for batch in np.unique(batches).tolist():
                mine = batches == batch
                self._deliver(batch, slots[mine], end_s[mine])
        if not self._recompute_pending:
            self._reschedule(float(ended[:, self._RATE].min()))

    def _deliver(self, batch: int, slots: np.ndarray, end_s: np.ndarray) -> None:
        latency_s, callback, left = self._callbacks[batch]
        left[0] -= slots.size
        if not left[0]:
            del self._callbacks[batch]
        callback(slots, end_s + latency_s[slots])


def _widen(links: np.ndarray, width: int, pad: int) -> np.ndarray:
    if links.shape[1] == width:
        return links
    out = np.full((links.shape[0], width), pad, dtype=np.int64)
    out[:, :links.shape[1]] = links
    return out


def _succeed_at(env: simpy.Environment, event: simpy.Event, at_s: float) -> None:
    """Trigger ``event`` at simulated time ``at_s`` (now if it is not in the future)."""
    delay = at_s - env.now
    if delay <= 0:
        event.succeed(at_s)
    else:
        env.timeout(delay).callbacks.append(lambda _e: event.succeed(at_s))
