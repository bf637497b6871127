"""The flow network compiled: the same max-min fluid as ``FlowNetwork``, fast.

``FlowNetwork`` (``_flows.py``) is the readable reference: flow state in numpy arrays, one
SimPy timer per flow end, a Python callback per delivered batch. This module computes the
same allocation with the same rules (progressive filling; after flows end, only the flows
at least as fast as the slowest ended one are re-filled, on the capacity the others leave;
flows ending within ``_SAME_END_RTOL`` of the next end end with it) in numba-compiled
kernels, and moves the collective bookkeeping inside them:

- every leg of every collective is registered once, as arrays: its links, bytes, latency,
  the GPUs whose joining starts it (``starters``) and those waiting for it (``waiters``);
  a flow is a started leg, indexed by its leg number;
- a flow keeps its remaining bytes as of its last rate change (lazily: a flow whose rate
  does not change is not touched), and its end time sits in an indexed heap;
- between two SimPy events the kernel runs every flow end on its own (``_run``), up to
  the next event in SimPy's queue or the next (collective, GPU) it completes, whichever
  comes first; only that completion reaches SimPy: one event per GPU and phase, not one
  per flow.

Nothing else (starts, joins, GPU processes) leaves SimPy, so the two networks see the same
events in the same order. ``tests/cost/test_flows_fast.py`` holds this one to the
reference: per-flow end times within 1e-9 relative on presets and random topologies.

The kernels compile on first use and are cached on disk (numba ``cache=True``): the first
call in a fresh environment costs a few seconds of compilation, later processes load them.
"""

from __future__ import annotations

import itertools
from collections import namedtuple
from collections.abc import Sequence

import numba
import numpy as np
import simpy

from macssim.cost._flows import _SAME_END_RTOL, _SAME_LINK_RTOL

__all__ = ["FastCollective", "FastFlowNetwork"]

_F8 = np.float64
_I8 = np.int64


# --- indexed 4-ary heap of flow end times -------------------------------------------------

_Heap = namedtuple("_Heap", "flow key pos")
"""Flows by end time: ``flow[i]``/``key[i]`` the i-th entry (keys inline, so a sift reads
contiguous memory), ``pos[f]`` where flow f sits (-1: not in the heap); size ``si[1]``."""


@numba.njit(cache=True)
def _sift_up(hp, i, f, k):
    while i > 0:
        parent = (i - 1) >> 2
        if hp.key[parent] <= k:
            break
        hp.key[i] = hp.key[parent]
        hp.flow[i] = hp.flow[parent]
        hp.pos[hp.flow[i]] = i
        i = parent
    hp.key[i] = k
    hp.flow[i] = f
    hp.pos[f] = i


@numba.njit(cache=True)
def _sift_down(hp, n, i, f, k):
    while True:
        first = 4 * i + 1
        if first >= n:
            break
        best = first
        bk = hp.key[first]
        for c in range(first + 1, min(first + 4, n)):
            if hp.key[c] < bk:
                best = c
                bk = hp.key[c]
        if k <= bk:
            break
        hp.key[i] = bk
        hp.flow[i] = hp.flow[best]
        hp.pos[hp.flow[i]] = i
        i = best
    hp.key[i] = k
    hp.flow[i] = f
    hp.pos[f] = i


@numba.njit(cache=True)
def _heap_set(hp, si, f, k):
    """Insert flow f with end time k, or move it there."""
    i = hp.pos[f]
    if i < 0:
        i = si[1]
        si[1] += 1
        _sift_up(hp, i, f, k)
    elif i > 0 and k < hp.key[(i - 1) >> 2]:
        _sift_up(hp, i, f, k)
    else:
        _sift_down(hp, si[1], i, f, k)


@numba.njit(cache=True)
def _heap_pop(hp, si):
    f = hp.flow[0]
    si[1] -= 1
    n = si[1]
    hp.pos[f] = -1
    if n > 0:
        _sift_down(hp, n, 0, hp.flow[n], hp.key[n])
    return f


# --- max-min rates -------------------------------------------------------------------------

@numba.njit(cache=True)
def _push(hk, hl, hn, key, link):
    i = hn
    while i > 0:
        parent = (i - 1) >> 1
        if hk[parent] <= key:
            break
        hk[i] = hk[parent]
        hl[i] = hl[parent]
        i = parent
    hk[i] = key
    hl[i] = link
    return hn + 1


@numba.njit(cache=True)
def _pop(hk, hl, hn):
    """Drop the top of the (key, link) heap of size hn; returns the new size."""
    hn -= 1
    if hn > 0:
        key = hk[hn]
        link = hl[hn]
        i = 0
        while True:
            c = 2 * i + 1
            if c >= hn:
                break
            if c + 1 < hn and hk[c + 1] < hk[c]:
                c += 1
            if key <= hk[c]:
                break
            hk[i] = hk[c]
            hl[i] = hl[c]
            i = c
        hk[i] = key
        hl[i] = link
    return hn


@numba.njit(cache=True)
def _fill(links, rate, newr, alive, si, cap, used, room, cnt, moving, touched, hk, hl, lk,
          floor):
    """Progressive filling of the moving flows (all when ``floor`` <= 0, else the fast
    flows connected to the ended ones: ``_component``) on the capacity the others leave.
    Writes ``newr`` and ``moving``; returns how many flows moved (negative: rounding
    starved one, fill again from scratch)."""
    pad = cap.size
    width = links.shape[1]
    full = floor <= 0.0
    if full:
        si[5] += 1
        stamp = si[5]
        for k in range(si[0]):
            f = alive[k]
            moving[k] = f
            lk.fmark[f] = stamp
        nm = si[0]
    else:
        nm = _component(links, rate, floor * (1.0 - _SAME_LINK_RTOL), moving, lk, si)
        stamp = si[5]
    nt = 0
    for i in range(nm):
        f = moving[i]
        for p in range(width):
            link = links[f, p]
            if link == pad:
                continue
            if cnt[link] == 0:
                room[link] = cap[link] if full else cap[link] - used[link]
                touched[nt] = link
                nt += 1
                lk.head[link] = -1
            cnt[link] += 1
            lk.next[f * width + p] = lk.head[link]
            lk.head[link] = f * width + p
            if not full:
                room[link] += rate[f]
    # a lazy heap of links by the level at which they fill up: a popped link whose level
    # has risen since (its other flows froze lower) goes back with its new level
    hn = 0
    for j in range(nt):
        link = touched[j]
        if room[link] < 0.0:
            room[link] = 0.0
        hn = _push(hk, hl, hn, room[link] / cnt[link], link)
    left = nm
    while hn > 0 and left > 0:
        bound = hk[0]
        link = hl[0]
        hn = _pop(hk, hl, hn)
        c = cnt[link]
        if c == 0:
            continue
        level = room[link] / c
        if level > bound * (1.0 + _SAME_LINK_RTOL):
            hn = _push(hk, hl, hn, level, link)
            continue
        cnt[link] = 0
        entry = lk.head[link]
        while entry >= 0:
            f = entry // width
            entry = lk.next[entry]
            if lk.fmark[f] != stamp:
                continue
            lk.fmark[f] = -stamp   # frozen
            left -= 1
            newr[f] = level
            for p in range(width):
                other = links[f, p]
                if other != pad and other != link:
                    room[other] -= level
                    cnt[other] -= 1
    for j in range(nt):
        cnt[touched[j]] = 0
    for i in range(nm):
        if not newr[moving[i]] > 0.0:
            return -1
    return nm


_LinkUsers = namedtuple("_LinkUsers", "base count users pos lmark fmark seeds queue head next")
"""The live flows crossing each link: link l's are ``users[base[l]:base[l] + count[l]]``;
``pos[f, p]`` is where flow f sits in the list of its p-th link. ``lmark``/``fmark`` stamp
links and flows seen in a search (``si[5]`` the current stamp), ``seeds`` [``si[6]``] the
links the search starts from, ``queue`` its links to visit. ``head``/``next``: during a
filling, the moving flows of each link as a linked list of ``f * P + p`` entries."""


@numba.njit(cache=True)
def _link(f, links, pad, lk):
    for p in range(links.shape[1]):
        link = links[f, p]
        if link != pad:
            k = lk.count[link]
            lk.users[lk.base[link] + k] = f
            lk.pos[f, p] = k
            lk.count[link] = k + 1


@numba.njit(cache=True)
def _unlink(f, links, pad, lk):
    width = links.shape[1]
    for p in range(width):
        link = links[f, p]
        if link == pad:
            continue
        k = lk.pos[f, p]
        last = lk.count[link] - 1
        lk.count[link] = last
        moved = lk.users[lk.base[link] + last]
        lk.users[lk.base[link] + k] = moved
        for q in range(width):
            if links[moved, q] == link:
                lk.pos[moved, q] = k


@numba.njit(cache=True)
def _relink(alive, si, links, pad, lk):
    lk.count[:] = 0
    for k in range(si[0]):
        _link(alive[k], links, pad, lk)


@numba.njit(cache=True)
def _component(links, rate, limit, moving, lk, si):
    """The flows with a rate >= ``limit`` connected to the seed links through links
    shared by such flows: the only ones whose max-min rate can change when the flows that
    crossed the seeds end (any other group of fast flows faces the same capacities as
    before). Writes them to ``moving``; returns how many."""
    pad = lk.base.size - 1
    width = links.shape[1]
    stamp = si[5]
    queue = lk.queue
    nq = 0
    for j in range(si[6]):
        queue[nq] = lk.seeds[j]
        nq += 1
    head = 0
    nm = 0
    while head < nq:
        link = queue[head]
        head += 1
        b = lk.base[link]
        for k in range(b, b + lk.count[link]):
            f = lk.users[k]
            if lk.fmark[f] == stamp or rate[f] < limit:
                continue
            lk.fmark[f] = stamp
            moving[nm] = f
            nm += 1
            for p in range(width):
                other = links[f, p]
                if other != pad and lk.lmark[other] != stamp:
                    lk.lmark[other] = stamp
                    queue[nq] = other
                    nq += 1
    return nm


@numba.njit(cache=True)
def _recompute(now, floor, links, rate, newr, rem, tupd, end, hp, alive, si, sf, cap,
               used, room, cnt, moving, touched, hk, hl, lk):
    """New rates from ``now`` on (``floor`` as in ``_fill``); moves the changed flows'
    remaining bytes to ``now`` and their end times in the heap."""
    si[2] += 1
    sf[0] = now
    full = floor <= 0.0
    n = _fill(links, rate, newr, alive, si, cap, used, room, cnt, moving, touched, hk, hl, lk,
              floor)
    if n < 0 and not full:
        full = True
        n = _fill(links, rate, newr, alive, si, cap, used, room, cnt, moving, touched, hk, hl,
                  lk, 0.0)
    si[4] += n
    pad = cap.size
    width = links.shape[1]
    if full:
        used[:] = 0.0
    for i in range(n):
        f = moving[i]
        r = newr[f]
        old = rate[f]
        if full or r != old:
            for p in range(width):
                link = links[f, p]
                if link != pad:
                    used[link] += r if full else r - old
        if r != old:
            left = rem[f] - old * (now - tupd[f])
            rem[f] = left if left > 0.0 else 0.0
            tupd[f] = now
            rate[f] = r
            end[f] = now + rem[f] / r
            _heap_set(hp, si, f, end[f])


@numba.njit(cache=True)
def _done_one(c, at_s, pending, last_s, out, si, horizon):
    """One of counter c's pending parts is done at ``at_s``; returns the new horizon."""
    pending[c] -= 1
    if at_s > last_s[c]:
        last_s[c] = at_s
    if pending[c] == 0:
        out[si[3]] = c
        si[3] += 1
        if last_s[c] < horizon:
            horizon = last_s[c]
    return horizon


@numba.njit(cache=True)
def _run(horizon, links, lat, wstart, wlen, wait, pending, last_s, out, rate, newr, rem, tupd,
         end, hp, alive, apos, si, sf, cap, used, room, cnt, moving, touched, hk, hl,
         lk):
    """Run flow ends up to ``horizon`` (lowered to each completion's time); completed
    counters go to ``out[:si[3]]``."""
    pad = cap.size
    width = links.shape[1]
    while si[1] > 0:
        e = hp.key[0]
        if e > horizon:
            break
        t0 = sf[0]
        lim = t0 + (e - t0) * (1.0 + _SAME_END_RTOL)
        floor = np.inf
        si[5] += 1   # a new mark: the links of the ended flows seed the refill
        si[6] = 0
        while si[1] > 0 and hp.key[0] <= lim:
            f = _heap_pop(hp, si)
            r = rate[f]
            if r < floor:
                floor = r
            for p in range(width):
                link = links[f, p]
                if link != pad:
                    used[link] -= r
                    if lk.lmark[link] != si[5]:
                        lk.lmark[link] = si[5]
                        lk.seeds[si[6]] = link
                        si[6] += 1
            _unlink(f, links, pad, lk)
            k = apos[f]
            si[0] -= 1
            moved = alive[si[0]]
            alive[k] = moved
            apos[moved] = k
            at_s = e + lat[f]
            for w in range(wstart[f], wstart[f] + wlen[f]):
                horizon = _done_one(wait[w], at_s, pending, last_s, out, si, horizon)
        sf[0] = e
        if si[0] > 0:
            _recompute(e, floor, links, rate, newr, rem, tupd, end, hp, alive, si, sf,
                       cap, used, room, cnt, moving, touched, hk, hl, lk)


@numba.njit(cache=True)
def _take_part(c, now, pad, sstart, slen, starts, need, nbytes, links, lat, wstart, wlen, wait,
               pending, last_s, out, rate, rem, tupd, end, alive, apos, si, lk):
    """Counter c's GPU takes part at ``now``: legs whose starters have all taken part
    start (zero-byte or link-less ones are delivered after their latency); returns how
    many flows started."""
    added = 0
    horizon = np.inf
    for j in range(sstart[c], sstart[c] + slen[c]):
        leg = starts[j]
        need[leg] -= 1
        if need[leg]:
            continue
        crosses = False
        for p in range(links.shape[1]):
            if links[leg, p] != pad:
                crosses = True
        if nbytes[leg] > 0.0 and crosses:
            rem[leg] = nbytes[leg]
            tupd[leg] = now
            rate[leg] = 0.0
            end[leg] = np.inf
            alive[si[0]] = leg
            apos[leg] = si[0]
            _link(leg, links, pad, lk)
            si[0] += 1
            added += 1
        else:
            for w in range(wstart[leg], wstart[leg] + wlen[leg]):
                horizon = _done_one(wait[w], now + lat[leg], pending, last_s, out, si, horizon)
    _done_one(c, now, pending, last_s, out, si, horizon)
    return added


class FastFlowNetwork:
    """Links of fixed capacity shared max-min fairly by the flows in flight, compiled.

    The same fluid as ``FlowNetwork`` with ``end_rtol`` = 0, driven through collectives
    (``FastCollective``) rather than callbacks per flow; ``transfer`` runs one flow.

    Args:
        env: the simulation's environment (time in seconds).
        capacity_bytes_per_s: [NL] capacity of each link; flows name links by index.
    """

    def __init__(self, env: simpy.Environment, capacity_bytes_per_s: Sequence[float]) -> None:
        cap = np.asarray(capacity_bytes_per_s, dtype=_F8)
        if cap.ndim != 1 or (cap.size and not (cap > 0).all()):
            raise ValueError('"capacity_bytes_per_s" must be a 1-D array of values > 0')
        self._env = env
        self._cap = cap
        self._pad = int(cap.size)
        nl = self._pad
        self._used, self._room = np.zeros(nl), np.zeros(nl)
        self._cnt, self._touched = np.zeros(nl + 1, _I8), np.zeros(nl + 1, _I8)
        self._si = np.zeros(7, _I8)   # live flows, heap size, recomputations, completions,
        #                               flows refilled, search stamp, seeds
        self._sf = np.zeros(1)        # time of the last rate change
        self._sf[0] = env.now
        self._chunks: list[tuple] = []
        self._num_legs = 0
        self._num_counters = 0
        self._events: list[simpy.Event | None] = []
        self._legs = _LegArrays.empty(1)
        self._dirty = False
        self._version = 0
        self._timer_at = np.nan

    @property
    def recomputations(self) -> int:
        """How many times rates were recomputed (for profiling)."""
        return int(self._si[2])

    @property
    def active_flows(self) -> int:
        return int(self._si[0])

    def add_collective(self, links: np.ndarray, nbytes: np.ndarray, latency_s: np.ndarray,
                       starters: Sequence[Sequence[int]], waiters: Sequence[Sequence[int]],
                       num_gpus: int) -> int:
        """Register a collective's N legs (links [N, P] padded with NL, bytes [N], latency
        [N], starter and waiter GPUs per leg); returns the id of its GPU 0 (GPU g is that
        + g, for ``join``)."""
        links = np.asarray(links, dtype=_I8)
        nbytes = np.asarray(nbytes, dtype=_F8)
        latency_s = np.asarray(latency_s, dtype=_F8)
        n = nbytes.size
        if links.ndim != 2 or links.shape[0] != n or latency_s.size != n or len(starters) != n \
                or len(waiters) != n:
            raise ValueError("links [N, P], nbytes [N], latency_s [N], starters and waiters "
                             "must agree")
        if n and (nbytes.min() < 0 or links.min() < 0 or links.max() > self._pad):
            raise ValueError("nbytes must be >= 0 and links must lie in [0, NL]")
        base = self._num_counters
        need = np.fromiter(map(len, starters), _I8, n)
        st_gpu = np.fromiter(itertools.chain.from_iterable(starters), _I8, int(need.sum()))
        st_leg = np.repeat(np.arange(n, dtype=_I8), need) + self._num_legs
        order = np.argsort(st_gpu, kind="stable")
        slen = np.bincount(st_gpu, minlength=num_gpus).astype(_I8)
        wlen = np.fromiter(map(len, waiters), _I8, n)
        wait = np.fromiter(itertools.chain.from_iterable(waiters), _I8, int(wlen.sum()))
        pending = np.bincount(wait, minlength=num_gpus).astype(_I8) + 1
        self._chunks.append((links, nbytes, latency_s, need, wlen, wait + base, slen,
                             st_leg[order], pending))
        self._num_legs += n
        self._num_counters += num_gpus
        self._events.extend([None] * num_gpus)
        return base

    def join(self, counter: int, delay_s: float = 0.0) -> simpy.Event:
        """The GPU of ``counter`` is ready; it takes part ``delay_s`` later. The event
        succeeds when it is done (value: that time)."""
        event = self._env.event()
        self._events[counter] = event
        if delay_s > 0:
            self._env.timeout(delay_s).callbacks.append(lambda _e: self._take_part(counter))
        else:
            self._take_part(counter)
        return event

    def transfer(self, links: Sequence[int], nbytes: float, latency_s: float = 0.0
                 ) -> simpy.Event:
        """One flow; the event succeeds when it is delivered (value: delivery time)."""
        row = np.full((1, max(len(links), 1)), self._pad, dtype=_I8)
        row[0, :len(links)] = links
        base = self.add_collective(row, [nbytes], [latency_s], ((0,),), ((0,),), 1)
        return self.join(base)

    # --- internals --------------------------------------------------------------------

    def _consolidate(self) -> None:
        self._legs = self._legs.extend(self._chunks, self._pad)
        self._chunks = []
        _relink(self._legs.alive, self._si, self._legs.links, self._pad, self._legs.lk)

    def _take_part(self, counter: int) -> None:
        if self._chunks:
            self._consolidate()
        now = self._env.now
        a = self._legs
        if not self._dirty and self._si[1] and a.hp.key[0] <= now:
            self._run(now)
        added = _take_part(counter, now, self._pad, a.sstart, a.slen, a.starts, a.need,
                           a.nbytes, a.links, a.lat, a.wstart, a.wlen, a.wait, a.pending,
                           a.last_s, a.out, a.rate, a.rem, a.tupd, a.end, a.alive, a.apos,
                           self._si, a.lk)
        self._complete()
        if added and not self._dirty:
            self._dirty = True
            self._version += 1
            self._timer_at = np.nan
            self._env.timeout(0.0).callbacks.append(self._on_recompute)
        elif not self._dirty:
            self._set_timer()

    def _on_recompute(self, _event: simpy.Event) -> None:
        self._dirty = False
        a = self._legs
        _recompute(self._env.now, 0.0, a.links, a.rate, a.newr, a.rem, a.tupd, a.end, a.hp,
                   a.alive, self._si, self._sf, self._cap, self._used, self._room,
                   self._cnt, a.moving, self._touched, a.hk, a.hl, a.lk)
        self._run(self._env.peek())
        self._set_timer()

    def _on_timer(self, version: int) -> None:
        if version != self._version:
            return   # a start or a later timer replaced this one
        self._timer_at = np.nan
        self._run(self._env.peek())
        self._set_timer()

    def _run(self, horizon: float) -> None:
        a = self._legs
        _run(horizon, a.links, a.lat, a.wstart, a.wlen, a.wait, a.pending, a.last_s, a.out,
             a.rate, a.newr, a.rem, a.tupd, a.end, a.hp, a.alive, a.apos, self._si,
             self._sf, self._cap, self._used, self._room, self._cnt, a.moving, self._touched,
             a.hk, a.hl, a.lk)
        self._complete()

    def _set_timer(self) -> None:
        if not self._si[1]:
            return
        a = self._legs
        at_s = float(a.hp.key[0])
        if at_s == self._timer_at:
            return
        self._version += 1
        self._timer_at = at_s
        version = self._version
        self._env.timeout(max(at_s - self._env.now, 0.0)).callbacks.append(
            lambda _e: self._on_timer(version))

    def _complete(self) -> None:
        """Succeed the events of the counters the kernels completed, at their times."""
        n = int(self._si[3])
        if not n:
            return
        self._si[3] = 0
        a = self._legs
        env = self._env
        now = env.now
        for c, at_s in zip(a.out[:n].tolist(), a.last_s[a.out[:n]].tolist(), strict=True):
            event = self._events[c]
            self._events[c] = None
            if at_s <= now:
                event.succeed(at_s)
            else:
                env.timeout(at_s - now).callbacks.append(
                    lambda _e, event=event, at_s=at_s: event.succeed(at_s))


class _LegArrays:
    """Every registered leg's arrays (per leg; a flow is a started leg), and per counter
    (one per collective and GPU)."""

    _PER_LEG_F8 = ("nbytes", "lat", "rem", "tupd", "rate", "newr", "end")
    _PER_LEG_I8 = ("need", "wstart", "wlen", "apos", "alive", "moving")

    @classmethod
    def empty(cls, width: int) -> _LegArrays:
        a = cls()
        a.links = np.zeros((0, width), _I8)
        for name in cls._PER_LEG_F8:
            setattr(a, name, np.zeros(0))
        for name in cls._PER_LEG_I8:
            setattr(a, name, np.zeros(0, _I8))
        a.wait = np.zeros(0, _I8)
        a.starts = np.zeros(0, _I8)
        a.sstart, a.slen, a.pending = (np.zeros(0, _I8) for _ in range(3))
        a.last_s = np.zeros(0)
        a.out = np.zeros(0, _I8)
        a.hk, a.hl = np.zeros(1), np.zeros(1, _I8)
        a.lk = _link_users(a.links, 0)
        a.hp = _Heap(flow=np.zeros(0, _I8), key=np.zeros(0), pos=np.zeros(0, _I8))
        return a

    def extend(self, chunks: list[tuple], pad: int) -> _LegArrays:
        a = _LegArrays()
        width = max([self.links.shape[1]] + [c[0].shape[1] for c in chunks])
        a.links = np.concatenate([_widen(self.links, width, pad)]
                                 + [_widen(c[0], width, pad) for c in chunks])
        n_new = sum(c[1].size for c in chunks)
        n = self.nbytes.size + n_new
        a.nbytes = np.concatenate([self.nbytes] + [c[1] for c in chunks])
        a.lat = np.concatenate([self.lat] + [c[2] for c in chunks])
        a.need = np.concatenate([self.need] + [c[3] for c in chunks])
        wlen = np.concatenate([c[4] for c in chunks]) if chunks else np.zeros(0, _I8)
        a.wlen = np.concatenate([self.wlen, wlen])
        a.wstart = np.concatenate([self.wstart, self.wait.size + np.cumsum(wlen) - wlen])
        a.wait = np.concatenate([self.wait] + [c[5] for c in chunks])
        slen = np.concatenate([c[6] for c in chunks]) if chunks else np.zeros(0, _I8)
        a.slen = np.concatenate([self.slen, slen])
        a.sstart = np.concatenate([self.sstart, self.starts.size + np.cumsum(slen) - slen])
        a.starts = np.concatenate([self.starts] + [c[7] for c in chunks])
        a.pending = np.concatenate([self.pending] + [c[8] for c in chunks])
        a.last_s = np.concatenate([self.last_s, np.full(slen.size, -np.inf)])
        a.out = np.zeros(a.pending.size, _I8)
        for name in ("rem", "tupd", "rate", "newr"):
            setattr(a, name, np.concatenate([getattr(self, name), np.zeros(n_new)]))
        a.end = np.concatenate([self.end, np.full(n_new, np.inf)])
        a.hp = _Heap(flow=np.concatenate([self.hp.flow, np.zeros(n_new, _I8)]),
                     key=np.concatenate([self.hp.key, np.zeros(n_new)]),
                     pos=np.concatenate([self.hp.pos, np.full(n_new, -1, _I8)]))
        for name in ("apos", "alive", "moving"):
            setattr(a, name, np.concatenate([getattr(self, name), np.zeros(n_new, _I8)]))
        a.hk = np.zeros(n * width + pad + 1)
        a.hl = np.zeros(n * width + pad + 1, _I8)
        a.lk = _link_users(a.links, pad)
        return a


def _link_users(links: np.ndarray, pad: int) -> _LinkUsers:
    per_link = np.bincount(links.ravel(), minlength=pad + 1)[:pad + 1].astype(_I8)
    base = np.concatenate([[0], np.cumsum(per_link)[:-1]]).astype(_I8)
    return _LinkUsers(base=base, count=np.zeros(pad + 1, _I8),
                      users=np.zeros(max(int(per_link.sum()), 1), _I8),
                      pos=np.zeros(links.shape, _I8), lmark=np.zeros(pad + 1, _I8),
                      fmark=np.zeros(links.shape[0], _I8), seeds=np.zeros(pad + 1, _I8),
                      queue=np.zeros(pad + 1, _I8), head=np.zeros(pad + 1, _I8),
                      next=np.zeros(links.size, _I8))


def _widen(links: np.ndarray, width: int, pad: int) -> np.ndarray:
    if links.shape[1] == width:
        return links
    out = np.full((links.shape[0], width), pad, dtype=_I8)
    out[:, :links.shape[1]] = links
    return out


class FastCollective:
    """``Collective`` on a ``FastFlowNetwork``: the same legs, joins and completion rule,
    tracked inside the network's kernels."""

    def __init__(self, env: simpy.Environment, network: FastFlowNetwork, routes, legs,
                 num_gpus: int) -> None:
        n = legs.src.size
        links = routes.links[legs.src, legs.dst] if n else np.zeros((0, 1), _I8)
        latency = routes.latency_s[legs.src, legs.dst] if n else np.zeros(0)
        self._network = network
        self._fixed_s = float(legs.fixed_s)
        self._base = network.add_collective(links, legs.nbytes, latency, legs.starters,
                                            legs.waiters, num_gpus)

    def join(self, gpu: int) -> simpy.Event:
        """GPU ``gpu`` is ready; the event succeeds when it is done."""
        return self._network.join(self._base + gpu, self._fixed_s)
