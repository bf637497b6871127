"""EPLB: replicate the hottest experts into redundant slots and pack the slots so that GPU
loads even out (DeepSeek's expert-parallel load balancer, github deepseek-ai/EPLB,
``rebalance_experts``), written from its description, in numpy.

The load model is EPLB's: an expert with r replicas hands each replica 1/r of its load,
and a GPU's load is the sum over its slots. The algorithm, per layer:

1. Hierarchical when the expert groups divide evenly over the nodes: pack the groups to
   nodes (balanced packing, an equal number of groups per node), so that a group-limited
   router keeps its traffic inside few nodes. Otherwise one "node" holds everything
   (global).
2. Within each node, give its (E + N)/nodes slots to its experts: one each, then every
   redundant slot to the expert whose load per replica is highest.
3. Within each node, pack the replicas to its GPUs (balanced packing, (E + N)/G slots per
   GPU): heaviest replica first, into the lightest GPU that still has a free slot.

Where macssim differs: DeepSeek's greedy packing is a heuristic and can, on some loads,
leave a heavier GPU than the plain contiguous layout would. ``eplb_placement`` then keeps
the contiguous layout and fills its free slots with replicas that cannot raise any GPU's
load (a second copy of an expert already on the GPU; on a GPU holding none, a copy of
the expert with the most load per replica), so EPLB is never worse than contiguous on the
loads it was built from. Ties are broken by the lowest index (DeepSeek's ``sort`` leaves
them undefined): the result is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from macssim._errors import TopologyError
from macssim.placement._placement import PLACEMENTS, Placement, contiguous_placement

__all__ = ["eplb_placement", "expert_loads_from_trace", "gpu_loads", "imbalance",
           "placements_from_trace"]


def gpu_loads(placement: Placement, loads: np.ndarray) -> np.ndarray:
    """[G] load of each GPU under EPLB's model: each replica of expert e carries
    ``loads[e] / replicas(e)``."""
    loads = np.asarray(loads, dtype=np.float64)
    replicas = np.bincount(placement.slot_expert, minlength=loads.size)
    share = loads[placement.slot_expert] / replicas[placement.slot_expert]
    return np.bincount(placement.slot_gpu, weights=share, minlength=placement.num_gpus)


def imbalance(placement: Placement, loads: np.ndarray) -> float:
    """max / mean GPU load (1.0 is perfectly even; 1.0 when there is no load)."""
    per_gpu = gpu_loads(placement, loads)
    mean = per_gpu.mean()
    return float(per_gpu.max() / mean) if mean > 0 else 1.0


def _balanced_pack(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Items -> packs of exactly n/num_packs items each: heaviest first, each into the
    lightest pack with room (lowest pack index on ties). Returns (pack, rank in pack)."""
    n = weight.size
    per_pack = n // num_packs
    pack = np.empty(n, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64)
    pack_weight = np.zeros(num_packs)
    pack_items = np.zeros(num_packs, dtype=np.int64)
    for item in np.argsort(-weight, kind="stable"):
        open_weight = np.where(pack_items < per_pack, pack_weight, np.inf)
        p = int(np.argmin(open_weight))
        pack[item], rank[item] = p, pack_items[p]
        pack_weight[p] += weight[item]
        pack_items[p] += 1
    return pack, rank


def _replicate(weight: np.ndarray, num_slots: int) -> np.ndarray:
    """Slots -> expert: one slot per expert, then each further slot to the expert with the
    highest load per replica (lowest index on ties). Returns [num_slots] expert ids."""
    count = np.ones(weight.size, dtype=np.int64)
    extra = []
    for _ in range(num_slots - weight.size):
        e = int(np.argmax(weight / count))
        extra.append(e)
        count[e] += 1
    return np.concatenate([np.arange(weight.size), np.asarray(extra, dtype=np.int64)])


def _deepseek_layout(weight: np.ndarray, num_slots: int, num_groups: int, num_nodes: int,
                     num_gpus: int) -> Placement:
    """Steps 1-3 of the module docstring for one layer."""
    num_experts = weight.size
    group_size = num_experts // num_groups
    group_pack, group_rank = _balanced_pack(weight.reshape(num_groups, group_size).sum(1),
                                            num_nodes)
    groups_per_node = num_groups // num_nodes
    gpus_per_node = num_gpus // num_nodes
    slots_per_node = num_slots // num_nodes
    slots_per_gpu = num_slots // num_gpus
    slot_expert = np.empty(num_slots, dtype=np.int64)
    slot_gpu = np.empty(num_slots, dtype=np.int64)
    for node in range(num_nodes):
        # The node's experts: its groups in packing order, each group's experts in order.
        groups = np.flatnonzero(group_pack == node)
        groups = groups[np.argsort(group_rank[groups])]
        assert groups.size == groups_per_node
        experts = (groups[:, None] * group_size + np.arange(group_size)).reshape(-1)
        local = _replicate(weight[experts], slots_per_node)         # slot -> node-local expert
        count = np.bincount(local, minlength=experts.size)
        gpu, rank = _balanced_pack(weight[experts][local] / count[local], gpus_per_node)
        where = node * slots_per_node + gpu * slots_per_gpu + rank
        slot_expert[where] = experts[local]
        slot_gpu[where] = node * gpus_per_node + gpu
    return Placement(num_gpus=num_gpus, slot_expert=slot_expert, slot_gpu=slot_gpu)


def _contiguous_filled(weight: np.ndarray, num_slots: int, num_gpus: int) -> Placement:
    """Contiguous layout with its free slots filled by replicas that raise no GPU's load:
    a second copy of an expert already on the GPU (its load stays on the GPU), or, on a
    GPU with no expert, a copy of the expert with the most load per replica (that GPU
    gets at most what one replica already carried; the others only lose)."""
    base = contiguous_placement(weight.size, num_gpus)
    slots_per_gpu = num_slots // num_gpus
    count = np.bincount(base.slot_expert, minlength=weight.size)
    expert, gpu = list(base.slot_expert), list(base.slot_gpu)
    for g in range(num_gpus):
        own = [int(e) for e in base.slot_expert[base.slot_gpu == g]]
        for i in range(slots_per_gpu - len(own)):
            if own:
                e = own[i % len(own)]
            else:
                e = int(np.argmax(weight / count))
            count[e] += 1
            expert.append(e)
            gpu.append(g)
    return Placement(num_gpus=num_gpus, slot_expert=np.asarray(expert, dtype=np.int64),
                     slot_gpu=np.asarray(gpu, dtype=np.int64))


def eplb_placement(loads: np.ndarray, num_gpus: int, redundant_experts: int, *,
                   gpus_per_node: int | None = None, num_groups: int = 1) -> Placement:
    """EPLB placement of one layer's experts from their measured loads.

    Args:
        loads: [E] load of each logical expert (e.g. routed token-expert assignments
            counted on a trace); only ratios matter.
        num_gpus: G; redundant_experts: N extra slots (E + N must be a multiple of G:
            every GPU gets (E + N)/G slots, as DeepSeek's code requires).
        gpus_per_node: GPUs per node (None: one node); num_groups: expert groups of a
            group-limited router (1: none). Hierarchical when the groups divide evenly
            over the nodes, global otherwise.
    Returns:
        A Placement with E + N slots; every expert keeps at least one.
    """
    loads = np.asarray(loads, dtype=np.float64)
    num_experts = loads.size
    if loads.ndim != 1 or num_experts == 0:
        raise TopologyError(f"eplb: loads must be [E] with E > 0, got shape {list(loads.shape)}")
    if not np.isfinite(loads).all() or (loads < 0).any():
        raise TopologyError("eplb: loads must be finite and >= 0")
    if num_gpus <= 0 or redundant_experts < 0:
        raise TopologyError(f"eplb: need num_gpus > 0 and redundant_experts >= 0, got "
                            f"{num_gpus} and {redundant_experts}")
    num_slots = num_experts + redundant_experts
    if num_slots % num_gpus:
        raise TopologyError(f"eplb: experts + redundant experts ({num_experts} + "
                            f"{redundant_experts}) must be a multiple of the {num_gpus} GPUs "
                            "(each GPU gets the same number of slots); e.g. "
                            f"--redundant-experts {-num_experts % num_gpus}")
    gpn = gpus_per_node or num_gpus
    if num_gpus % gpn:
        raise TopologyError(f"eplb: {num_gpus} GPUs are not whole nodes of {gpn}")
    if num_groups <= 0 or num_experts % num_groups:
        raise TopologyError(f"eplb: {num_groups} expert groups do not divide {num_experts} "
                            "experts")
    num_nodes = num_gpus // gpn
    if num_groups % num_nodes == 0:
        layout = _deepseek_layout(loads, num_slots, num_groups, num_nodes, num_gpus)
    else:
        layout = _deepseek_layout(loads, num_slots, 1, 1, num_gpus)
    fallback = _contiguous_filled(loads, num_slots, num_gpus)
    if gpu_loads(layout, loads).max() > gpu_loads(fallback, loads).max():
        return fallback
    return layout


def expert_loads_from_trace(trace, steps: Iterable[int] | None = None) -> np.ndarray:
    """[L, E] routed assignments of each expert per MoE layer, counted from the router's
    top-k (what tokens asked for, before any policy drops), over ``steps`` (step
    indices; None: every step)."""
    model = trace.model
    wanted = None if steps is None else set(int(s) for s in steps)
    last = None if wanted is None else max(wanted, default=-1)
    counts = np.zeros((model.num_moe_layers, model.num_experts), dtype=np.int64)
    for step in trace:
        if last is not None and step.index > last:
            break
        if wanted is not None and step.index not in wanted:
            continue
        ids = step.topk_ids.reshape(step.topk_ids.shape[0], -1)
        for layer in range(ids.shape[0]):
            counts[layer] += np.bincount(ids[layer][ids[layer] >= 0],
                                         minlength=model.num_experts)
    return counts


def placements_from_trace(kind: str, trace, num_gpus: int, redundant_experts: int = 0, *,
                          gpus_per_node: int | None = None, steps: int | None = None,
                          num_groups: int = 1) -> list[Placement]:
    """One placement per MoE layer, as ``macssim replay --placement KIND`` runs them:
    ``contiguous`` (the same for every layer), or ``eplb`` built per layer from that
    layer's loads over the trace's first ``steps`` steps (None: all), as DeepSeek's code
    does. Per layer because expert popularity differs by layer: on the one-request trace
    bundled before 2026-12-01 each layer's hottest expert takes 5-14x the mean, while the
    loads summed over the layers are nearly even (max/mean 1.7 per expert, 1.05 per
    contiguous GPU), so one placement for all layers would leave most of the imbalance in
    place.

    ``num_groups`` is 1 because the trace's model facts carry no expert groups (as vLLM
    does for models without group-limited routing): global on several nodes.
    """
    if kind not in PLACEMENTS:
        raise TopologyError(f'placement must be one of {", ".join(PLACEMENTS)}, got {kind!r}')
    model = trace.model
    if kind == "contiguous":
        if redundant_experts:
            raise TopologyError("redundant experts need --placement eplb (contiguous places "
                                "each expert once)")
        return [contiguous_placement(model.num_experts, num_gpus)] * model.num_moe_layers
    loads = expert_loads_from_trace(trace, None if steps is None else range(steps))
    return [eplb_placement(w, num_gpus, redundant_experts, gpus_per_node=gpus_per_node,
                           num_groups=num_groups) for w in loads]
