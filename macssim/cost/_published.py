"""The network model beside published all-to-all bandwidths (``docs/validation.md``).

Each row runs the flow network on the message sizes and routing of one published
benchmark and reports the bandwidth the way that benchmark computes it:

- nccl-tests ``alltoall_perf``: every rank sends S/G bytes to every rank; ``busbw =
  (S / t) · (G − 1) / G``. NVIDIA's maintainers quote ≈ 370 GB/s on 8×H100 NVLink
  (NVIDIA/nccl-tests#212) and 48–49 GB/s per ConnectX-7 NIC across nodes (#267).
- DeepEP normal kernels (deepseek-ai/DeepEP ``docs/legacy.md``, tests/legacy/test_*.py):
  4096 tokens per rank, hidden 7168, 256 experts, top-8 (top-4 node groups across nodes),
  random scores; FP8 dispatch (7168 + 7168/128·4 bytes per token), BF16 combine. Their
  "bottleneck bandwidth" is *logical*: intranode, bytes a rank receives including its own
  tokens; internode, one copy per (token, node) pair including the local node.

Each row is computed twice: with the ``ideal`` engine (macssim before engines: one flow per
GPU pair at the calibrated capacity) and with the engine the benchmark ran (``nccl``,
``deepep-normal``).

Running it: ``python benchmarks/bench_cluster.py --validate`` (or ``validation_markdown()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from macssim.cost._collectives import collective_s
from macssim.cost._engines import TokenCounts
from macssim.cost._precision import fp8_row_bytes
from macssim.hardware import AllToAllSpec, Topology, load_topology

__all__ = ["ValidationRow", "benchmark_routing", "validation_markdown", "validation_rows"]

_HIDDEN = 7168
_FP8_TOKEN_BYTES = fp8_row_bytes(_HIDDEN)   # e4m3 values + one fp32 scale per 128
_BF16_TOKEN_BYTES = 2 * _HIDDEN
_GIB = 1 << 30


@dataclass(frozen=True)
class ValidationRow:
    preset: str
    benchmark: str
    message: str
    published_gb_per_s: float
    ideal_gb_per_s: float
    """The prediction of the ``ideal`` engine (per-GPU-pair flows, no engine model)."""
    predicted_gb_per_s: float
    """The prediction of ``engine``."""
    engine: str
    note: str

    @property
    def relative_error(self) -> float:
        return self.predicted_gb_per_s / self.published_gb_per_s - 1.0

    @property
    def ideal_relative_error(self) -> float:
        return self.ideal_gb_per_s / self.published_gb_per_s - 1.0


def _uniform_done_s(topo: Topology, bytes_per_rank: float, engine: str) -> float:
    num_gpus = topo.num_gpus
    pair = np.full((num_gpus, num_gpus), bytes_per_rank / num_gpus)
    counts = TokenCounts(pair_tokens=pair, assignment_pairs=pair,
                         node_tokens=np.zeros((num_gpus, topo.nodes)))
    return float(collective_s(topo, counts, 1.0, "dispatch", AllToAllSpec(engine)).max())


def nccl_busbw_gb_per_s(topo: Topology, bytes_per_rank: float, engine: str = "nccl") -> float:
    """nccl-tests alltoall bus bandwidth for a send buffer of ``bytes_per_rank``."""
    num_gpus = topo.num_gpus
    t = _uniform_done_s(topo, bytes_per_rank, engine)
    return bytes_per_rank / t * (num_gpus - 1) / num_gpus / 1e9


def nccl_nic_gb_per_s(topo: Topology, bytes_per_rank: float, engine: str = "nccl") -> float:
    """Bytes crossing one NIC per second during a multi-node nccl-tests alltoall."""
    num_gpus = topo.num_gpus
    t = _uniform_done_s(topo, bytes_per_rank, engine)
    remote = num_gpus - topo.gpus_per_node
    return remote * bytes_per_rank / num_gpus / t / 1e9


def benchmark_routing(topo: Topology, seed: int, tokens_per_rank: int = 4096,
                    num_experts: int = 256, top_k: int = 8) -> TokenCounts:
    """DeepEP's test routing: random scores, top-min(nodes, 4) node groups, then top-k
    experts inside them; the (token, GPU), (token, expert) and (token, node) counts."""
    rng = np.random.default_rng(seed)
    num_gpus, nodes = topo.num_gpus, topo.nodes
    per_gpu, per_node = num_experts // num_gpus, num_experts // nodes
    groups = min(nodes, 4)
    tokens = np.zeros((num_gpus, num_gpus), dtype=np.int64)
    assignments = np.zeros((num_gpus, num_gpus), dtype=np.int64)
    node_tokens = np.zeros((num_gpus, nodes), dtype=np.int64)
    for src in range(num_gpus):
        scores = np.abs(rng.standard_normal((tokens_per_rank, num_experts))) + 1.0
        if groups < nodes:
            best = scores.reshape(tokens_per_rank, nodes, per_node).max(axis=2)
            chosen = np.argpartition(-best, groups - 1, axis=1)[:, :groups]
            mask = np.zeros((tokens_per_rank, nodes), dtype=bool)
            np.put_along_axis(mask, chosen, True, axis=1)
            scores = np.where(np.repeat(mask, per_node, axis=1), scores, -np.inf)
        experts = np.argpartition(-scores, top_k - 1, axis=1)[:, :top_k]
        needs = np.zeros((tokens_per_rank, num_gpus), dtype=bool)
        np.put_along_axis(needs, experts // per_gpu, True, axis=1)
        tokens[src] = needs.sum(axis=0)
        assignments[src] = np.bincount((experts // per_gpu).ravel(), minlength=num_gpus)
        hit = np.zeros((tokens_per_rank, nodes), dtype=bool)
        np.put_along_axis(hit, experts // per_node, True, axis=1)
        node_tokens[src] = hit.sum(axis=0)
    return TokenCounts(pair_tokens=tokens, assignment_pairs=assignments,
                       node_tokens=node_tokens)


def deepep_gb_per_s(topo: Topology, seed: int = 0, engine: str = "deepep-normal"
                    ) -> tuple[float, float]:
    """(dispatch, combine) logical bandwidth per rank, as DeepEP's tests compute it: bytes
    over each rank's kernel time (here: until the rank is done with the collective),
    averaged over ranks. FP8 dispatch, BF16 combine."""
    counts = benchmark_routing(topo, seed)
    spec = AllToAllSpec(engine)
    result = []
    for token_bytes, phase in ((_FP8_TOKEN_BYTES, "dispatch"), (_BF16_TOKEN_BYTES, "combine")):
        done = collective_s(topo, counts, token_bytes, phase, spec, receivers_wait=True)
        if topo.nodes == 1:
            logical = counts.pair_tokens.sum(axis=0) * token_bytes     # received, incl. own
        else:
            logical = counts.node_tokens.sum(axis=1) * token_bytes     # one copy per node
        result.append(float(np.mean(logical / done)) / 1e9)
    return result[0], result[1]


_NCCL_TABLE = ((8 << 20, 177.8), (128 << 20, 290.6), (512 << 20, 317.4))
"""NVIDIA's measured 8-rank NCCL 2.27.3 all-to-all on H100 SXM (aiconfigurator-core
0.12.0, h100_sxm/comm/nccl/2.27.3/nccl_perf.parquet): bus bandwidth at 8, 128 and 512 MiB
per rank, half and int8 rows averaged. The NCCL fit was made on these rows: calibration."""


def validation_rows(*, large: bool = True) -> list[ValidationRow]:
    """Every row of the validation table; ``large=False`` skips the 32- and 64-GPU runs."""
    rows: list[ValidationRow] = []
    for preset in ("8xH100", "8xH200"):
        topo = load_topology(preset)
        for size in (1 * _GIB, 8 * _GIB):
            rows.append(ValidationRow(
                preset, "nccl-tests alltoall busbw (NVLink 4)", f"{size // _GIB} GiB/rank",
                370.0, nccl_busbw_gb_per_s(topo, size, "ideal"),
                nccl_busbw_gb_per_s(topo, size, "nccl"), "nccl",
                "ideal: calibration (NVLink efficiency = 370/450)" if preset == "8xH100" else
                "same NVLink 4 and efficiency as 8xH100"))
    h100 = load_topology("8xH100")
    for size, busbw in _NCCL_TABLE:
        rows.append(ValidationRow(
            "8xH100", "NCCL 2.27 alltoall busbw, measured (aiconfigurator)",
            f"{size >> 20} MiB/rank", busbw, nccl_busbw_gb_per_s(h100, size, "ideal"),
            nccl_busbw_gb_per_s(h100, size, "nccl"), "nccl", "nccl: calibration (fit)"))
    h800 = load_topology("8xH800")
    ideal = deepep_gb_per_s(h800, engine="ideal")
    new = deepep_gb_per_s(h800)
    rows += [
        ValidationRow("8xH800", "DeepEP normal dispatch EP8 (NVL, logical)",
                      "4096 tok × 7168, FP8", 153.0, ideal[0], new[0], "deepep-normal",
                      "deepep-normal: calibration (SM budget)"),
        ValidationRow("8xH800", "DeepEP normal combine EP8 (NVL, logical)",
                      "4096 tok × 7168, BF16", 158.0, ideal[1], new[1], "deepep-normal",
                      "deepep-normal: calibration (SM budget)"),
    ]
    topo16 = load_topology("16xH100")
    rows.append(ValidationRow("16xH100", "nccl-tests alltoall, bytes per NIC (CX-7 NDR)",
                              "1 GiB/rank", 48.5, nccl_nic_gb_per_s(topo16, _GIB, "ideal"),
                              nccl_nic_gb_per_s(topo16, _GIB, "nccl"), "nccl",
                              "calibration: NIC efficiency = 48.5/50"))
    published = {2: (43.0, 43.0), 4: (58.0, 57.0), 8: (51.0, 50.0)}
    cases = [("16xH100", topo16, 2), ("8xH800 ×2 nodes", h800.with_nodes(2), 2)]
    if large:
        cases += [("8xH800 ×4 nodes", h800.with_nodes(4), 4),
                  ("64xH100", load_topology("64xH100"), 8),
                  ("8xH800 ×8 nodes", h800.with_nodes(8), 8)]
    for name, topo, nodes in cases:
        ideal = deepep_gb_per_s(topo, engine="ideal")
        new = deepep_gb_per_s(topo)
        ep = nodes * 8
        note = "independent" if "H800" in name else "independent; published on H800 (same CX-7)"
        rows += [
            ValidationRow(name, f"DeepEP normal dispatch EP{ep} (RDMA, logical)",
                          "4096 tok × 7168, FP8", published[nodes][0], ideal[0], new[0],
                          "deepep-normal", note),
            ValidationRow(name, f"DeepEP normal combine EP{ep} (RDMA, logical)",
                          "4096 tok × 7168, BF16", published[nodes][1], ideal[1], new[1],
                          "deepep-normal", note),
        ]
    return rows


def validation_markdown(rows: list[ValidationRow] | None = None) -> str:
    rows = validation_rows() if rows is None else rows
    lines = ["| topology | benchmark | message | published GB/s | ideal GB/s | ideal error | "
             "engine | engine GB/s | engine error | how the figure relates to the model |",
             "|---|---|---|---:|---:|---:|---|---:|---:|---|"]
    lines += [f"| {r.preset} | {r.benchmark} | {r.message} | {r.published_gb_per_s:.1f} | "
              f"{r.ideal_gb_per_s:.1f} | {r.ideal_relative_error:+.1%} | {r.engine} | "
              f"{r.predicted_gb_per_s:.1f} | {r.relative_error:+.1%} | {r.note} |"
              for r in rows]
    return "\n".join(lines) + "\n"
