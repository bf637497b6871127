"""The all-to-alls engines really run: which bytes cross which links, per engine.

An MoE layer's dispatch and combine are built as *legs*: flows of bytes from one GPU to
another on the topology's path between them, each with the GPUs that must have joined the
collective before it starts (``starters``) and the GPUs whose part of the collective ends
only once it is delivered (``waiters``). ``Collective`` runs them on the flow network, so
legs of different GPUs, layers and phases still share links max-min fairly.

Engines (``ENGINES``; chosen per topology with the YAML field ``alltoall`` and per run with
``SimOptions.alltoall``):

- ``ideal``: one flow per (source GPU, destination GPU) pair holding any of its tokens'
  kept experts, at the links' calibrated capacity, no fixed cost (macssim before engines).
- ``nccl``: NCCL all-to-all-v: the same flows, with a size-dependent efficiency fitted to
  NVIDIA's measured 8×H100 all-to-all curve (``NCCL_FIT``) on flows inside a node.
- ``deepep-normal``: DeepEP normal kernels: inside the node, one NVLink copy per
  (token, destination GPU); to another node, one RDMA copy per (token, destination node)
  to the GPU with the same local index there, which forwards it over NVLink to the
  destination GPUs of that node. Combine runs it backwards, the relay summing its node's
  partial results before the one RDMA copy home.
- ``deepep-ll``: DeepEP low-latency kernels: one copy per (token, expert) pair straight to
  the expert's GPU (no per-GPU deduplication, no forwarding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from macssim.cost._flows import FlowNetwork
from macssim.hardware import AllToAllSpec, Routes

__all__ = ["DEEPEP_COMBINE_FIXED_S", "DEEPEP_LL_FIXED_S", "DEEPEP_LL_NVLINK_EFFICIENCY",
           "NCCL_FIT", "Collective", "Legs", "TokenCounts", "build_legs", "engine_parameters",
           "nccl_size_efficiency"]

@dataclass(frozen=True)
class NcclFit:
    """NCCL all-to-all's efficiency on top of the calibrated NVLink capacity, as a
    function of the bytes m of one GPU pair's message:

        f(m) = f_inf / (1 + (m_half / m) ** p)

    Fitted (``benchmarks/fit_nccl_alltoall.py``, least squares on log time) to the 8-rank
    all-to-all rows of NVIDIA's measured NCCL 2.27.3 table for H100 SXM shipped by
    aiconfigurator-core 0.12.0 (``h100_sxm/comm/nccl/2.27.3/nccl_perf.parquet``; 21 sizes,
    512 B to 512 MiB per rank, half and int8 averaged), with the preset's 10 µs NVLink
    latency and 370 GB/s capacity: error within ±5 % from 1 MiB per rank up, up to +25 %
    (the model slower: 10 µs latency against ~8 µs measured) below 256 KiB; rms 10.6 %.
    The fit puts no fixed cost beyond the link latency (``fixed_s`` = 0)."""

    f_inf: float = 1.0
    m_half: float = 2.2014e5
    p: float = 0.309
    fixed_s: float = 0.0


NCCL_FIT = NcclFit()


def nccl_size_efficiency(message_bytes: np.ndarray | float, fit: NcclFit = NCCL_FIT
                         ) -> np.ndarray:
    """``f(m)`` of ``NcclFit`` for per-pair message sizes (bytes > 0)."""
    m = np.asarray(message_bytes, dtype=np.float64)
    return fit.f_inf / (1.0 + (fit.m_half / np.maximum(m, 1.0)) ** fit.p)


DEEPEP_NVLINK_EFFICIENCY = 0.84
"""DeepEP normal kernels' SM budget inside a node: with 20-24 SMs they reach ~84 % of what
NCCL reaches on NVLink. Calibrated on DeepEP's published EP8 H800 figures (153 GB/s
dispatch, 158 GB/s combine, logical; the model without it gives 184.9 and 185.9 at NCCL's
164 GB/s): the EP8 rows of docs/validation.md are therefore a calibration."""
DEEPEP_RDMA_EFFICIENCY = 1.0
"""Across nodes the NIC (48.5 GB/s calibrated) is the bottleneck; no further factor."""
DEEPEP_FIXED_S = 15e-6
"""The notify/layout kernels: one token per rank takes ~25 µs dispatch, ~30 µs combine in
NVIDIA's measured DeepEP normal table for H100 (aiconfigurator-core, SGLang 0.5.12,
notes/fidelity.md); 15 µs on top of the 10 µs link latency."""

DEEPEP_COMBINE_FIXED_S = 28e-6
"""Normal combine's fixed cost, in place of ``DEEPEP_FIXED_S``: besides the notify
exchange the combine reduces each token's top-k partial results on its home rank. Fitted
to the combine rows of NVIDIA's measured DeepEP normal table for H100 (aiconfigurator-core
0.12.0, SGLang 0.5.12, EP8, 24 SMs): the one-token floor is 30-49 µs, median 38 µs over
its 18 shapes; 28 µs on top of the 10 µs link latency."""
DEEPEP_LL_FIXED_S = 2e-6
"""Low-latency kernels' fixed cost: their one-token floor in NVIDIA's measured DeepEP
low-latency table for H100 (same source, EP8, 16 shapes) is 9-17 µs, median 12 µs:
2 µs on top of the 10 µs link latency."""
DEEPEP_LL_NVLINK_EFFICIENCY = {"dispatch": 0.68, "combine": 0.60}
"""What the low-latency kernels reach of the calibrated NVLink capacity per phase (few
SMs, per-expert receive buffers; combine also does the weighted top-k reduction on the
receiving side). Fitted to the >= 512 tokens-per-rank rows of the same low-latency table
(32 rows per phase), where the fixed cost no longer matters: without it the model is
32 % (dispatch) and 41 % (combine) too fast there."""

_DEFAULTS: dict[str, tuple[float, float, float]] = {  # (nvlink_eff, rdma_eff, fixed_s)
    "ideal": (1.0, 1.0, 0.0),
    "nccl": (1.0, 1.0, NCCL_FIT.fixed_s),
    "deepep-normal": (DEEPEP_NVLINK_EFFICIENCY, DEEPEP_RDMA_EFFICIENCY, DEEPEP_FIXED_S),
    "deepep-ll": (1.0, 1.0, DEEPEP_LL_FIXED_S),
}


def engine_parameters(spec: AllToAllSpec, phase: str = "dispatch"
                      ) -> tuple[float, float, float]:
    """``(nvlink_efficiency, rdma_efficiency, fixed_s)`` of ``spec`` in ``phase``: its own
    values where it sets them, the engine's calibrated defaults elsewhere (DeepEP's differ
    between dispatch and combine)."""
    nv, rdma, fixed = _DEFAULTS[spec.engine]
    if spec.engine == "deepep-normal" and phase == "combine":
        fixed = DEEPEP_COMBINE_FIXED_S
    elif spec.engine == "deepep-ll":
        nv = DEEPEP_LL_NVLINK_EFFICIENCY[phase]
    return (nv if spec.nvlink_efficiency is None else float(spec.nvlink_efficiency),
            rdma if spec.rdma_efficiency is None else float(spec.rdma_efficiency),
            fixed if spec.fixed_s is None else float(spec.fixed_s))

# ---------------------------------------------------------------------------------------
# Bytes per engine

@dataclass(frozen=True)
class TokenCounts:
    """How one layer's kept tokens spread over GPUs (G GPUs, N nodes).

    pair_tokens: [G, G] (token, destination GPU) pairs from the token's GPU (row).
    assignment_pairs: [G, G] kept (token, expert) assignments by token GPU and expert GPU.
    node_tokens: [G, N] (token, destination node) pairs from the token's GPU.
    """

    pair_tokens: np.ndarray
    assignment_pairs: np.ndarray
    node_tokens: np.ndarray


@dataclass(frozen=True)
class Legs:
    """Flows of one collective. N legs; ``src``/``dst`` are the GPUs whose route a leg takes.

    starters / waiters: per leg, the GPUs (tuples)."""

    src: np.ndarray
    dst: np.ndarray
    nbytes: np.ndarray
    """Bytes the flow network moves (the payload over the leg's efficiency)."""
    payload: np.ndarray
    """Bytes of data the leg carries."""
    starters: tuple[tuple[int, ...], ...]
    waiters: tuple[tuple[int, ...], ...]
    fixed_s: float = 0.0


def build_legs(spec: AllToAllSpec, num_gpus: int, gpus_per_node: int, counts: TokenCounts,
               token_bytes: float, phase: str) -> Legs:
    """The legs of a layer's ``phase`` ("dispatch" or "combine") under ``spec``.

    ``token_bytes`` is one token copy's bytes in the phase's precision (the caller's
    ``Precision``: BF16 h·b, FP8 dispatch h + 4·⌈h/128⌉)."""
    dispatch = phase == "dispatch"
    nv_eff, rdma_eff, fixed = engine_parameters(spec, phase)
    node = np.arange(num_gpus) // gpus_per_node
    same = node[:, None] == node[None, :]
    rows: list[tuple[int, int, float, float, tuple[int, ...], tuple[int, ...]]] = []

    def add(a: int, b: int, payload: float, eff: float, starters: tuple[int, ...],
            waiters: tuple[int, ...]) -> None:
        rows.append((a, b, payload / eff, payload, starters, waiters))

    if spec.engine in ("ideal", "nccl", "deepep-ll") or (
            spec.engine == "deepep-normal" and num_gpus == gpus_per_node):
        counts_m = counts.assignment_pairs if spec.engine == "deepep-ll" else counts.pair_tokens
        s_idx, d_idx = np.nonzero(counts_m)
        keep = s_idx != d_idx
        s_idx, d_idx = s_idx[keep], d_idx[keep]
        payload = counts_m[s_idx, d_idx].astype(np.float64) * token_bytes
        eff = np.ones(s_idx.size)
        if spec.engine == "nccl":
            intra = same[s_idx, d_idx]
            eff[intra] = nccl_size_efficiency(payload[intra])
        elif spec.engine != "ideal":
            eff = np.where(same[s_idx, d_idx], nv_eff, rdma_eff)
        # dispatch: token GPU s -> expert GPU d, both wait; combine: expert GPU d -> token
        # GPU s, the sender waits (built as arrays: one Python step per leg is measurable
        # on 64 GPUs)
        src, dst = (s_idx, d_idx) if dispatch else (d_idx, s_idx)
        starters = tuple(zip(src.tolist()))
        waiters = (tuple(zip(s_idx.tolist(), d_idx.tolist(), strict=True)) if dispatch
                   else starters)
        return Legs(src.astype(np.int64), dst.astype(np.int64), payload / eff, payload,
                    starters, waiters, fixed)
    # DeepEP normal across nodes
    pt = counts.pair_tokens
    local = np.arange(num_gpus) % gpus_per_node
    for s in range(num_gpus):
        for d in np.flatnonzero(pt[s] * same[s]).tolist():
            if d == s:
                continue
            p = float(pt[s, d]) * token_bytes
            if dispatch:
                add(s, d, p, nv_eff, (s,), (s, d))
            else:
                add(d, s, p, nv_eff, (d,), (d,))
        for b in range(num_gpus // gpus_per_node):
            if b == node[s] or counts.node_tokens[s, b] == 0:
                continue
            r = b * gpus_per_node + int(local[s])
            dests = [d for d in range(b * gpus_per_node, (b + 1) * gpus_per_node) if pt[s, d]]
            fwd = [d for d in dests if d != r]
            p_rdma = float(counts.node_tokens[s, b]) * token_bytes
            if dispatch:
                # the RDMA copy s -> r; r forwards to fwd (pipelined, chunk by chunk)
                add(s, r, p_rdma, rdma_eff, (s,), (s, r, *fwd))
                for d in fwd:
                    add(r, d, float(pt[s, d]) * token_bytes, nv_eff, (s, r), (r, d))
            else:
                # partial results d -> r over NVLink, r sums them and sends one copy home
                for d in fwd:
                    add(d, r, float(pt[s, d]) * token_bytes, nv_eff, (d,), (d,))
                add(r, s, p_rdma, rdma_eff, (r, *fwd), (r, *fwd))
    return _legs(rows, fixed)


def _legs(rows: list, fixed_s: float) -> Legs:
    if not rows:
        empty = np.zeros(0)
        return Legs(empty.astype(np.int64), empty.astype(np.int64), empty, empty, (), (),
                    fixed_s)
    a, b, nbytes, payload, starters, waiters = zip(*rows, strict=True)
    return Legs(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64),
                np.array(nbytes, dtype=np.float64), np.array(payload, dtype=np.float64),
                tuple(starters), tuple(waiters), fixed_s)


class Collective:
    """One collective's legs in flight on the flow network.

    A GPU joins when it is ready; ``fixed_s`` later it takes part: every leg whose starters
    have all taken part starts then. A GPU is done when every leg it waits for is
    delivered (and it has taken part); its event succeeds at that delivery time.
    """

    def __init__(self, env: simpy.Environment, network: FlowNetwork, routes: Routes,
                 legs: Legs, num_gpus: int) -> None:
        self._env, self._network, self._routes, self._legs = env, network, routes, legs
        n = legs.src.size
        self._need = [len(s) for s in legs.starters]
        self._starts: list[list[int]] = [[] for _ in range(num_gpus)]
        for leg, starters in enumerate(legs.starters):
            for g in starters:
                self._starts[g].append(leg)
        self._pending = [0] * num_gpus
        for waiters in legs.waiters:
            for g in waiters:
                self._pending[g] += 1
        self._links = routes.links[legs.src, legs.dst] if n else np.zeros((0, 1), np.int64)
        self._latency = routes.latency_s[legs.src, legs.dst] if n else np.zeros(0)
        self._last_s = [-np.inf] * num_gpus
        self._started = [False] * num_gpus
        self._fired = [False] * num_gpus
        self._done = [env.event() for _ in range(num_gpus)]

    def join(self, gpu: int) -> simpy.Event:
        """GPU ``gpu`` is ready; the event succeeds when it is done."""
        if self._legs.fixed_s > 0:
            self._env.timeout(self._legs.fixed_s).callbacks.append(
                lambda _e: self._take_part(gpu))
        else:
            self._take_part(gpu)
        return self._done[gpu]

    def _take_part(self, gpu: int) -> None:
        self._started[gpu] = True
        self._last_s[gpu] = max(self._last_s[gpu], self._env.now)
        ready = []
        for leg in self._starts[gpu]:
            self._need[leg] -= 1
            if not self._need[leg]:
                ready.append(leg)
        if ready:
            idx = np.array(ready, dtype=np.int64)
            self._network.start(self._links[idx], self._legs.nbytes[idx], self._latency[idx],
                                lambda i, at_s: self._delivered(idx[i], at_s))
        self._maybe_done(gpu)

    def _delivered(self, legs: np.ndarray, at_s: np.ndarray) -> None:
        touched = set()
        for leg, t in zip(legs.tolist(), at_s.tolist(), strict=True):
            for g in self._legs.waiters[leg]:
                self._pending[g] -= 1
                if t > self._last_s[g]:
                    self._last_s[g] = t
                touched.add(g)
        for g in touched:
            self._maybe_done(g)

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
