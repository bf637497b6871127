"""The topology as a graph, and the path every GPU-to-GPU transfer takes through it.

Nodes: ``gpu{g}``, ``nvswitch{n}`` (one NVSwitch plane per node), ``nic{n}.{i}`` (NIC i of
node n), ``ibswitch`` (the scale-out switch) and, when the fabric is blocking,
``ibswitch.fabric`` (the fabric's shared core). Every edge is one direction of one link.

Paths follow how EP traffic moves: inside a node ``gpu → nvswitch → gpu``; between nodes
``gpu → nic → ibswitch → nic → gpu`` (GPUDirect RDMA), GPU i sending through its own NIC
when there is one per GPU. Latencies sit on edges so that a path's latency is their sum:
NVLink start-up on ``gpu → nvswitch``, the NIC's on ``nic → ibswitch``, the switch's on
``ibswitch → nic``; all other edges add none.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np

if TYPE_CHECKING:
    from macssim.hardware._topology import Topology

__all__ = ["Routes", "build_graph", "build_routes"]


def _add_link(g: nx.DiGraph, u: str, v: str, bw: float, eff: float, latency_s: float) -> None:
    g.add_edge(u, v, bw_bytes_per_s=float(bw), efficiency=float(eff),
               capacity_bytes_per_s=float(bw) * float(eff), latency_s=float(latency_s),
               link=g.number_of_edges())


@functools.lru_cache(maxsize=64)
def build_graph(topo: Topology) -> nx.DiGraph:
    g = nx.DiGraph(name=topo.name)
    nv = topo.nvlink
    for n in range(topo.nodes):
        g.add_node(f"nvswitch{n}", kind="nvswitch", node=n)
    for gpu in range(topo.num_gpus):
        g.add_node(f"gpu{gpu}", kind="gpu", node=topo.node_of(gpu), gpu=gpu)
    for gpu in range(topo.num_gpus):
        sw = f"nvswitch{topo.node_of(gpu)}"
        _add_link(g, f"gpu{gpu}", sw, nv.bw_bytes_per_s, nv.efficiency, nv.latency_s)
        _add_link(g, sw, f"gpu{gpu}", nv.bw_bytes_per_s, nv.efficiency, 0.0)
    if topo.nic is None:
        return g
    nic = topo.nic
    for n in range(topo.nodes):
        for i in range(nic.per_node):
            g.add_node(f"nic{n}.{i}", kind="nic", node=n)
    for gpu in range(topo.num_gpus):
        name = _nic_name(topo, gpu)
        _add_link(g, f"gpu{gpu}", name, nic.rate_bytes_per_s, nic.efficiency, 0.0)
        _add_link(g, name, f"gpu{gpu}", nic.rate_bytes_per_s, nic.efficiency, 0.0)
    if topo.switch is None:
        return g
    sw = topo.switch
    g.add_node("ibswitch", kind="switch")
    egress = "ibswitch"
    if not sw.non_blocking:
        g.add_node("ibswitch.fabric", kind="switch")
        _add_link(g, "ibswitch", "ibswitch.fabric", sw.fabric_bw_bytes_per_s, 1.0, 0.0)
        egress = "ibswitch.fabric"
    for n in range(topo.nodes):
        for i in range(nic.per_node):
            name = f"nic{n}.{i}"
            _add_link(g, name, "ibswitch", nic.rate_bytes_per_s, nic.efficiency, nic.latency_s)
            _add_link(g, egress, name, nic.rate_bytes_per_s, nic.efficiency, sw.latency_s)
    return g


def _nic_name(topo: Topology, gpu: int) -> str:
    return f"nic{topo.node_of(gpu)}.{topo.nic_of(gpu)}"


def gpu_path(topo: Topology, src: int, dst: int) -> list[str]:
    """Graph nodes a transfer from GPU ``src`` to GPU ``dst`` crosses ([] when src == dst)."""
    if src == dst:
        return []
    if topo.node_of(src) == topo.node_of(dst):
        return [f"gpu{src}", f"nvswitch{topo.node_of(src)}", f"gpu{dst}"]
    core = ["ibswitch"] if topo.switch.non_blocking else ["ibswitch", "ibswitch.fabric"]
    return [f"gpu{src}", _nic_name(topo, src), *core, _nic_name(topo, dst), f"gpu{dst}"]


@dataclass(frozen=True)
class Routes:
    """Every GPU pair's path, ready for the flow network.

    Arrays (G GPUs, P the longest path in links, NL links):
        links: [G, G, P] int64, the links of the path src → dst that can limit its rate,
            padded with NL (a dummy link of infinite capacity); a GPU's path to itself is
            all padding. A link is left out when every path crossing it also crosses
            another link of no larger capacity (a GPU's PCIe hop to its own NIC behind
            that NIC's port, say): it can never be a flow's only bottleneck, so leaving it
            out changes no max-min rate and saves work.
        latency_s: [G, G] float64, sum of the full path's edge latencies (0 on the
            diagonal).
        capacity_bytes_per_s: [NL] float64, achievable capacity of each link
            (line rate × efficiency).
        link_names: the (u, v) graph edge of each link index.
    """

    links: np.ndarray
    latency_s: np.ndarray
    capacity_bytes_per_s: np.ndarray
    link_names: tuple[tuple[str, str], ...]

    @property
    def num_links(self) -> int:
        return int(self.capacity_bytes_per_s.size)


@functools.lru_cache(maxsize=64)
def build_routes(topo: Topology) -> Routes:
    graph = build_graph(topo)
    edges = sorted(graph.edges(data=True), key=lambda e: e[2]["link"])
    num_links = len(edges)
    capacity = np.array([d["capacity_bytes_per_s"] for _, _, d in edges], dtype=np.float64)
    num_gpus = topo.num_gpus
    hops: dict[tuple[int, int], list[int]] = {}
    latency = np.zeros((num_gpus, num_gpus), dtype=np.float64)
    for s in range(num_gpus):
        for d in range(num_gpus):
            nodes = gpu_path(topo, s, d)
            path = [graph.edges[u, v] for u, v in zip(nodes[:-1], nodes[1:], strict=True)]
            hops[s, d] = [e["link"] for e in path]
            for e in path:
                latency[s, d] += e["latency_s"]
    kept = _limiting_links(hops, capacity)
    width = max((len(kept[p]) for p in kept), default=1) or 1
    links = np.full((num_gpus, num_gpus, width), num_links, dtype=np.int64)
    for (s, d), path in kept.items():
        links[s, d, :len(path)] = path
    return Routes(links=links, latency_s=latency, capacity_bytes_per_s=capacity,
                  link_names=tuple((u, v) for u, v, _ in edges))


def _limiting_links(hops: dict[tuple[int, int], list[int]], capacity: np.ndarray
                    ) -> dict[tuple[int, int], list[int]]:
    """Drop from every path the links dominated by another link: link a is dominated by
    link b when every path crossing a also crosses b and b's capacity is no larger (ties
    between identical links keep the lower index)."""
    users: dict[int, set[tuple[int, int]]] = {}
    for pair, path in hops.items():
        for link in path:
            users.setdefault(link, set()).add(pair)
    dominated = set()
    for a, pairs_a in users.items():
        some_pair = next(iter(pairs_a))
        for b in hops[some_pair]:
            if b == a or b in dominated or capacity[b] > capacity[a]:
                continue
            pairs_b = users[b]
            if pairs_a <= pairs_b and (pairs_a != pairs_b or capacity[b] < capacity[a] or b < a):
                dominated.add(a)
                break
    return {pair: [link for link in path if link not in dominated]
            for pair, path in hops.items()}
