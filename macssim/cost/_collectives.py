"""All-to-all, dispatch and combine times on a topology, one collective on its own.

The step model runs collectives inside its own SimPy environment, where they share links
with every other collective in flight; these functions run one collective alone, every GPU
joining at t = 0, so that a user or a test can check a single number against a benchmark
(``macssim cost alltoall``, docs/validation.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import simpy

from macssim._errors import CostError
from macssim.cost._engines import Collective, Legs, TokenCounts, build_legs, nccl_size_efficiency
from macssim.cost._flows import FlowNetwork
from macssim.hardware import ENGINES, AllToAllSpec, Topology, build_routes

__all__ = ["ALLREDUCE_FIXED_S", "allreduce_legs", "allreduce_s", "alltoall_s", "collective_s",
           "count_tokens", "run_alone", "token_counts"]


def count_tokens(num_tokens: int, token: np.ndarray, src_gpu: np.ndarray, dst_gpu: np.ndarray,
                 num_gpus: int, gpus_per_node: int) -> TokenCounts:
    """Token counts of kept assignments given as flat arrays: assignment i belongs to token
    ``token[i]`` (on GPU ``src_gpu[i]``) and is computed on GPU ``dst_gpu[i]``."""
    from macssim.cost._count_kernel import count_pairs

    pairs, assignment_pairs, node_tokens = count_pairs(
        int(num_tokens), np.ascontiguousarray(token, dtype=np.int64),
        np.ascontiguousarray(src_gpu, dtype=np.int64),
        np.ascontiguousarray(dst_gpu, dtype=np.int64), int(num_gpus), int(gpus_per_node))
    return TokenCounts(pair_tokens=pairs, assignment_pairs=assignment_pairs,
                       node_tokens=node_tokens)


def count_routed(expert_ids: np.ndarray, kept: np.ndarray, token_gpu: np.ndarray,
                 expert_slot: np.ndarray, slot_gpu: np.ndarray, num_gpus: int,
                 gpus_per_node: int) -> tuple[int, int, np.ndarray, TokenCounts]:
    """``count_tokens`` straight from a layer's [T, K] routing when each expert has one
    slot (``expert_slot`` [E], ``slot_gpu`` [S]): (flat index of the first kept entry
    naming no expert 0..E-1, or -1; kept assignments, rows per slot [S], token counts)."""
    from macssim.cost._count_kernel import count_layer

    bad, kept_total, slot_rows, pairs, assignment_pairs, node_tokens = count_layer(
        np.ascontiguousarray(expert_ids, dtype=np.int64), np.ascontiguousarray(kept, dtype=bool),
        np.ascontiguousarray(token_gpu, dtype=np.int64),
        np.ascontiguousarray(expert_slot, dtype=np.int64),
        np.ascontiguousarray(slot_gpu, dtype=np.int64), int(num_gpus), int(gpus_per_node))
    return int(bad), int(kept_total), slot_rows, TokenCounts(
        pair_tokens=pairs, assignment_pairs=assignment_pairs, node_tokens=node_tokens)


def token_counts(topology: Topology, token_gpu: np.ndarray, expert_gpu: np.ndarray
                 ) -> TokenCounts:
    """How a routing spreads over the topology: ``token_gpu`` [T] the GPU each token lives
    on, ``expert_gpu`` [T, k] the GPU of each of its experts (-1: dropped)."""
    token_gpu = np.asarray(token_gpu, dtype=np.int64)
    expert_gpu = np.asarray(expert_gpu, dtype=np.int64)
    g = topology.num_gpus
    if token_gpu.ndim != 1 or expert_gpu.ndim != 2 or expert_gpu.shape[0] != token_gpu.size:
        raise CostError(f"token_counts: token_gpu must be [T] and expert_gpu [T, k], got "
                        f"{list(token_gpu.shape)} and {list(expert_gpu.shape)}")
    for name, a, low in (("token_gpu", token_gpu, 0), ("expert_gpu", expert_gpu, -1)):
        if a.size and (a.min() < low or a.max() >= g):
            raise CostError(f"token_counts: {name} must hold GPUs {low}..{g - 1} of "
                            f"{topology.name}, found {int(a.min())}..{int(a.max())}")
    t_idx, j_idx = np.nonzero(expert_gpu >= 0)
    return count_tokens(token_gpu.size, t_idx, token_gpu[t_idx], expert_gpu[t_idx, j_idx], g,
                        topology.gpus_per_node)


def _spec(engine: str | AllToAllSpec) -> AllToAllSpec:
    if isinstance(engine, AllToAllSpec):
        return engine
    if engine not in ENGINES:
        raise CostError(f"unknown all-to-all engine {engine!r}; known: {', '.join(ENGINES)}")
    return AllToAllSpec(engine)


def collective_s(topology: Topology, counts: TokenCounts, token_bytes: float, phase: str,
                 engine: str | AllToAllSpec = "nccl", *, receivers_wait: bool = False
                 ) -> np.ndarray:
    """[G] seconds until each GPU is done with one ``phase`` ("dispatch" or "combine") of
    ``counts`` under ``engine``, every GPU joining at t = 0; ``token_bytes`` is one token
    copy in the phase's precision.

    ``receivers_wait``: a GPU is done only once it has also received what is sent to it (a
    DeepEP kernel returns then; the step model ends a GPU's combine at its own sends and
    leaves receives to the layer's barrier)."""
    if phase not in ("dispatch", "combine"):
        raise CostError(f'phase must be "dispatch" or "combine", got {phase!r}')
    legs = build_legs(_spec(engine), topology.num_gpus, topology.gpus_per_node, counts,
                      token_bytes, phase)
    if receivers_wait:
        legs = dataclasses.replace(legs, waiters=tuple(
            w if b in w else (*w, b) for w, b in zip(legs.waiters, legs.dst.tolist(),
                                                      strict=True)))
    return run_alone(topology, legs)


def run_alone(topology: Topology, legs: Legs) -> np.ndarray:
    """[G] seconds until each GPU is done with ``legs``, every GPU joining at t = 0 on an
    otherwise idle network."""
    env = simpy.Environment()
    routes = build_routes(topology)
    coll = Collective(env, FlowNetwork(env, routes.capacity_bytes_per_s), routes, legs,
                      topology.num_gpus)
    done = np.zeros(topology.num_gpus)

    def gpu(g: int):
        yield coll.join(g)
        done[g] = env.now

    for g in range(topology.num_gpus):
        env.process(gpu(g))
    env.run()
    return done


ALLREDUCE_FIXED_S = 5.5e-6
"""NCCL all-reduce's floor beyond one NVLink latency: NVIDIA's measured 8-rank all-reduce
on H100 SXM (NCCL 2.27.3, aiconfigurator-core 0.12.0 ``nccl_perf``) takes 15.5–16 µs from
512 B to 16 KiB per rank; the preset's NVLink latency is 10 µs."""


def allreduce_legs(topology: Topology, group_size: int, bytes_per_gpu: np.ndarray) -> Legs:
    """A ring all-reduce in every group of ``group_size`` consecutive GPUs: each GPU sends
    its ring neighbour ``2·(t − 1)/t`` of its buffer (reduce-scatter then all-gather), at
    NCCL's size efficiency (``NCCL_FIT``), once every GPU of its group has joined.

    Against the same measured 8-rank table: −7 %…0 % up to 16 KiB per rank, −19 %…−3 %
    from 32 KiB to 32 MiB (NCCL's protocol switches are not modelled), +9 %…+15 % from
    64 MiB to 512 MiB (the model's NVLink capacity is all-to-all's 370 GB/s; NCCL's
    all-reduce reaches a bus bandwidth of 393 GB/s at 512 MiB)."""
    t = int(group_size)
    g = topology.num_gpus
    if t < 1 or topology.gpus_per_node % t:
        raise CostError(f"all-reduce group of {t} GPUs must divide the {topology.gpus_per_node} "
                        f"GPUs per node of {topology.name}")
    b = np.broadcast_to(np.asarray(bytes_per_gpu, dtype=np.float64), (g,))
    if t == 1:
        empty = np.zeros(0)
        return Legs(empty.astype(np.int64), empty.astype(np.int64), empty, empty, (), (), 0.0)
    src = np.arange(g, dtype=np.int64)
    dst = (src // t) * t + (src % t + 1) % t
    payload = 2.0 * (t - 1) / t * b
    eff = nccl_size_efficiency(np.maximum(payload, 1.0))
    groups = [tuple(range(k * t, (k + 1) * t)) for k in range(g // t)]
    busy = np.flatnonzero(payload > 0)  # a group with no tokens runs no forward
    members = tuple(groups[k // t] for k in busy.tolist())
    return Legs(src[busy], dst[busy], (payload / eff)[busy], payload[busy], members, members,
                ALLREDUCE_FIXED_S)


def allreduce_s(topology: Topology, group_size: int, bytes_per_gpu: np.ndarray) -> np.ndarray:
    """[G] seconds of one all-reduce of ``bytes_per_gpu`` in every group of ``group_size``
    consecutive GPUs (``allreduce_legs``), run alone; zeros for groups of one."""
    if group_size == 1:
        return np.zeros(topology.num_gpus)
    return run_alone(topology, allreduce_legs(topology, group_size, bytes_per_gpu))


def alltoall_s(topology: Topology, bytes_matrix: np.ndarray,
               engine: str | AllToAllSpec = "nccl") -> np.ndarray:
    """[G] seconds until each GPU is done with an all-to-all-v moving ``bytes_matrix``
    [G, G] (row: sender; the diagonal stays local), every GPU joining at t = 0.

    Only engines whose traffic a bytes matrix determines (``nccl``, ``ideal``); DeepEP's
    depends on which tokens go where (``collective_s`` with ``token_counts``)."""
    spec = _spec(engine)
    if spec.engine not in ("nccl", "ideal"):
        raise CostError(f"alltoall_s: engine {spec.engine!r} moves tokens, not a bytes "
                        "matrix; use collective_s(topology, token_counts(...), ...)")
    m = np.asarray(bytes_matrix, dtype=np.float64)
    g = topology.num_gpus
    if m.shape != (g, g) or not np.all(np.isfinite(m)) or (m < 0).any():
        raise CostError(f"alltoall_s: bytes_matrix must be a finite, non-negative [{g}, {g}] "
                        f"array for {topology.name}, got shape {list(m.shape)}")
    counts = TokenCounts(pair_tokens=m, assignment_pairs=m,
                         node_tokens=np.zeros((g, topology.nodes)))
    return collective_s(topology, counts, 1.0, "dispatch", spec)
