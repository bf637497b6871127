"""One forward step of an MoE model on an expert-parallel cluster, as SimPy processes.

A prefill step starts with the vision encoder on every GPU holding image or video tokens;
the decoder starts when all encoders are done. Then, for every MoE layer, each GPU runs a
process that reads like the sentence describing it:

    dense layers before this one → attention → router and policy → dispatch all-to-all
    → local experts → shared experts → combine all-to-all → arrive at the barrier

and the layer ends when every GPU has arrived (``_Barrier``). The output head ends the
step. Durations of compute phases come from ``_compute`` (rooflines; the routed experts
costed per expert slot, as a grouped GEMM), computed for all layers before the clock
starts; the all-to-alls run on the flow network, where dispatch
and combine flows of different GPUs share links as they overlap in time.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from macssim._errors import MacssimError, TopologyError
from macssim.cluster._load import ExpertMap, LayerLoad, LayerRouting, layer_load
from macssim.cluster._records import PHASE_DTYPE, GpuLayerRecord, LayerRecord, StepResult
from macssim.cluster._tensor_parallel import sequence_parallel_split, tensor_parallel_shard
from macssim.cluster.metrics import PHASES, imbalance, straggler_delay_s
from macssim.cost import (
    GROUPED_GEMM,
    ROOFLINE,
    Collective,
    CostModel,
    FlowNetwork,
    Legs,
    Precision,
    TokenCounts,
    allreduce_legs,
    allreduce_s,
    build_legs,
    check_precision,
    padded_rows,
)
from macssim.cost._precision import as_precision, row_bytes
from macssim.hardware import ENGINES, AllToAllSpec, Topology, build_routes
from macssim.placement import Placement
from macssim.trace import MODALITIES, ModelFacts

__all__ = ["SimOptions", "simulate_step"]

_STEP_KINDS = ("prefill", "decode")
_FLOW_SOLVERS = ("fast", "reference")
_VISION_CODES = (MODALITIES.index("image"), MODALITIES.index("video"))
(_VISION, _DENSE, _ATTENTION, _ALLREDUCE, _ROUTER, _EXCHANGE, _DISPATCH, _EXPERTS, _SHARED,
 _COMBINE, _BARRIER, _HEAD) = range(len(PHASES))


@dataclass(frozen=True)
class SimOptions:
    """Knobs of the step model that are not hardware (hardware is the topology)."""

    router_s: float = 10e-6
    """Router GEMM, top-k and the capacity policy, per MoE layer on each GPU with tokens.
    An assumption (a handful of small kernels at a few µs each); 0 removes it."""
    include_head: bool = True
    """Run the output head (trailing dense layers and the LM head) at the end of the step."""
    flow_end_rtol: float = 0.0
    """0: recompute link shares at every flow's end (exact max-min fluid). > 0: a flow
    ending within this fraction of its running time after another ends with it (its own
    delivery time stays exact), which bounds the work on big clusters (see
    ``FlowNetwork``). Measured on 64xH100: 0.02 runs a prefill step ~3× faster and moves
    its latency by ~1 %."""
    flow_solver: str = "fast"
    """``fast``: the compiled flow network (``macssim.cost._flows_fast``), the same fluid
    as the reference to 1e-9 relative; ``reference``: the readable numpy ``FlowNetwork``
    it is tested against. ``flow_end_rtol`` > 0 always runs the reference."""
    alltoall: str | None = None
    """The all-to-all engine (``nccl``, ``deepep-normal``, ``deepep-ll``, ``ideal``);
    None: the topology's (its YAML field ``alltoall``, default ``nccl``)."""
    precision: Precision = Precision()
    """Which phases compute in FP8 and what dispatch carries (``Precision``, or a preset
    name: ``bf16``, ``fp8-experts``, ``fp8``); default all BF16, the model before
    precisions. FP8 compute needs the topology's ``gpu.fp8_flops_per_s``."""
    attention_tp: int = 1
    """GPUs sharing one attention (and dense layer) by tensor parallelism: 1 is
    data-parallel attention (each GPU attends its own requests, SGLang's
    ``--enable-dp-attention``); t > 1 splits heads, dense MLP and LM head over groups of t
    consecutive GPUs of a node, which all-reduce the attention output (phase
    ``allreduce``) and split the group's tokens evenly for the expert all-to-all (vLLM's
    sequence-parallel MoE). Must divide the GPUs per node and the attention heads."""
    costs: CostModel = ROOFLINE
    """Where compute costs come from: the calibrated roofline (default) or measured
    tables, which fall back to the roofline outside their coverage and say so
    (``CostModel.coverage``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", as_precision(self.precision))
        if self.alltoall is not None and self.alltoall not in ENGINES:
            raise MacssimError(f'SimOptions: "alltoall" must be one of {", ".join(ENGINES)}, '
                               f"got {self.alltoall!r}")
        if not (isinstance(self.attention_tp, int) and self.attention_tp >= 1):
            raise MacssimError(f'SimOptions: "attention_tp" must be an integer >= 1, got '
                               f"{self.attention_tp!r}")
        if not self.router_s >= 0:
            raise MacssimError(f'SimOptions: "router_s" must be >= 0, got {self.router_s!r}')
        if self.flow_solver not in _FLOW_SOLVERS:
            raise MacssimError(f'SimOptions: "flow_solver" must be one of '
                               f'{", ".join(_FLOW_SOLVERS)}, got {self.flow_solver!r}')
        if not 0 <= self.flow_end_rtol < 1:
            raise MacssimError(f'SimOptions: "flow_end_rtol" must lie in [0, 1), got '
                               f"{self.flow_end_rtol!r}")


def alltoall_spec(topo: Topology, options: SimOptions) -> AllToAllSpec:
    """The engine a step runs: ``options.alltoall`` over the topology's, keeping the
    topology's parameters when the engine is the same."""
    spec = topo.alltoall
    if options.alltoall is None or options.alltoall == spec.engine:
        return spec
    return AllToAllSpec(engine=options.alltoall)


@dataclass(frozen=True)
class _Plan:
    """Every duration and load of the step, per GPU (G) and MoE layer (L)."""

    tokens: np.ndarray          # [G] tokens on each GPU
    vision_s: np.ndarray        # [G]
    dense_before_s: np.ndarray  # [L, G] dense decoder layers that precede MoE layer l
    attention_s: np.ndarray     # [G] one decoder layer's attention
    router_s: np.ndarray        # [G]
    experts_s: np.ndarray       # [L, G]
    shared_s: np.ndarray        # [G]
    head_s: np.ndarray          # [G]
    loads: tuple[LayerLoad, ...]
    exchange_bytes: tuple[np.ndarray | None, ...]  # per layer: [G] or None
    allreduce_bytes: np.ndarray  # [G] attention output each GPU all-reduces (TP > 1)


def simulate_step(topo: Topology, model: ModelFacts, placement: Placement, step_kind: str, *,
                  token_gpu: np.ndarray, position: np.ndarray, modality: np.ndarray,
                  layers: Sequence[LayerRouting], request_id: np.ndarray | None = None,
                  step_index: int = 0, options: SimOptions | None = None) -> StepResult:
    """Simulate one forward step and measure it.

    Args:
        topo: the cluster.
        model: the model's shape (``macssim.trace.ModelFacts``).
        placement: expert → GPU (physical slots; replicas are spread by token index).
        step_kind: ``"prefill"`` (runs the vision encoder) or ``"decode"``.
        token_gpu: [T] int64, GPU running each token's attention
            (``assign_requests_to_gpus``).
        position: [T] int64, each token's position in its request (context for attention).
        modality: [T] uint8, ``macssim.trace.MODALITIES`` codes; image and video tokens run
            the vision encoder on prefill steps.
        layers: one ``LayerRouting`` per MoE layer (``model.num_moe_layers`` of them).
        request_id: [T] int64, optional; without it a request is a run of consecutive
            tokens on one GPU with consecutive positions.
        step_index: the step's index, copied into every record.
        options: ``SimOptions``; defaults if None.

    Returns:
        A ``StepResult`` with per-layer, per-GPU-layer and per-phase records.
    """
    options = options or SimOptions()
    check_precision(topo, options.precision)
    if topo.gpus_per_node % options.attention_tp:
        raise TopologyError(f"attention_tp = {options.attention_tp} must divide the "
                            f"{topo.gpus_per_node} GPUs per node of {topo.name!r} (a TP group "
                            f"stays inside a node)")
    tensor_parallel_shard(model, options.attention_tp)   # refuses heads it cannot split
    token_gpu, position, modality, request_id = _check_inputs(
        topo, model, placement, step_kind, token_gpu, position, modality, layers, request_id)
    plan = _plan(topo, model, placement, step_kind, token_gpu, position, modality, layers,
                 request_id, options)
    env = simpy.Environment()
    run = _StepRun(env, topo, plan, options,
                   dispatch_bytes=row_bytes(model, options.precision.dispatch),
                   combine_bytes=row_bytes(model, options.precision.combine))
    run.start()
    env.run()
    return run.result(step_index, step_kind, num_tokens=int(token_gpu.size))


def _check_inputs(topo: Topology, model: ModelFacts, placement: Placement, step_kind: str,
                  token_gpu: Any, position: Any, modality: Any, layers: Sequence[LayerRouting],
                  request_id: Any) -> tuple[np.ndarray, ...]:
    if step_kind not in _STEP_KINDS:
        raise MacssimError(f'simulate_step: "step_kind" is {step_kind!r}, expected one of '
                           f"{_STEP_KINDS}")
    if placement.num_gpus != topo.num_gpus or int(placement.slot_gpu.max()) >= topo.num_gpus:
        raise TopologyError(f"placement is for {placement.num_gpus} GPUs (names GPU up to "
                            f"{int(placement.slot_gpu.max())}), but topology {topo.name!r} has "
                            f"GPUs 0..{topo.num_gpus - 1}")
    if placement.num_experts != model.num_experts:
        raise MacssimError(f"placement covers {placement.num_experts} experts, model "
                           f"{model.name!r} has {model.num_experts}")
    arrays = {"token_gpu": token_gpu, "position": position, "modality": modality}
    if request_id is not None:
        arrays["request_id"] = request_id
    out = {name: np.asarray(a) for name, a in arrays.items()}
    num_tokens = out["token_gpu"].shape[0] if out["token_gpu"].ndim == 1 else -1
    for name, arr in out.items():
        if arr.ndim != 1 or arr.shape[0] != num_tokens or num_tokens == 0:
            raise MacssimError(f'simulate_step: "{name}" must be [T] with the same T >= 1 as '
                               f'"token_gpu", got shape {list(arr.shape)}')
    tg = out["token_gpu"].astype(np.int64)
    if tg.min() < 0 or tg.max() >= topo.num_gpus:
        raise TopologyError(f'simulate_step: "token_gpu" names GPU {int(tg.max())}, but '
                            f"topology {topo.name!r} has GPUs 0..{topo.num_gpus - 1}")
    if out["position"].min() < 0:
        raise MacssimError('simulate_step: "position" must be >= 0')
    if out["modality"].max() >= len(MODALITIES) or out["modality"].min() < 0:
        raise MacssimError(f'simulate_step: "modality" codes must lie in 0..{len(MODALITIES) - 1}'
                           f" ({', '.join(MODALITIES)})")
    if len(layers) != model.num_moe_layers:
        raise MacssimError(f"simulate_step: got {len(layers)} LayerRouting, model "
                           f"{model.name!r} has {model.num_moe_layers} MoE layers")
    rid = out.get("request_id")
    return (tg, out["position"].astype(np.int64), out["modality"].astype(np.int64),
            None if rid is None else rid.astype(np.int64))


def _requests(token_gpu: np.ndarray, position: np.ndarray, request_id: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Requests of the step: (GPU of each request [R], context length of each [R])."""
    if request_id is None:
        new = np.ones(token_gpu.size, dtype=bool)
        new[1:] = (token_gpu[1:] != token_gpu[:-1]) | (position[1:] != position[:-1] + 1)
        request_id = np.cumsum(new)
    _, first, inverse = np.unique(request_id, return_index=True, return_inverse=True)
    context = np.zeros(first.size, dtype=np.int64)
    np.maximum.at(context, inverse.reshape(-1), position + 1)
    return token_gpu[first], context


def _plan(topo: Topology, model: ModelFacts, placement: Placement, step_kind: str,
          token_gpu: np.ndarray, position: np.ndarray, modality: np.ndarray,
          layers: Sequence[LayerRouting], request_id: np.ndarray | None,
          options: SimOptions) -> _Plan:
    gpu, num_gpus = topo.gpu, topo.num_gpus
    prec, costs, tp = options.precision, options.costs, options.attention_tp
    req_gpu, context = _requests(token_gpu, position, request_id)
    # Attention and dense layers run per group of tp GPUs on the group's tokens, each GPU
    # with 1/tp of the heads and weights (tp = 1: every GPU its own tokens, whole model).
    group = token_gpu // tp
    shard = tensor_parallel_shard(model, tp)
    per_group = num_gpus // tp
    members = np.repeat(np.arange(per_group), tp)     # [G] each GPU's group

    def by_group(index: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(index, weights=weights, minlength=per_group)[members]

    group_tokens = by_group(group).astype(np.float64)
    requests = by_group(req_gpu // tp).astype(np.float64)
    kv_read = by_group(req_gpu // tp, context.astype(np.float64))
    context_sum = by_group(group, position + 1.0)
    attention = costs.attention_s(shard, gpu, group_tokens, kv_read, context_sum, prec)
    dense_layer = attention + costs.dense_mlp_s(shard, gpu, group_tokens, prec)
    moe = np.asarray(model.moe_layers)
    before = np.diff(np.concatenate([[-1], moe])) - 1
    trailing = model.num_layers - 1 - int(moe[-1])
    is_vision = np.isin(modality, _VISION_CODES)
    vision = (costs.vision_s(model, gpu, np.bincount(token_gpu[is_vision], minlength=num_gpus))
              if step_kind == "prefill" else np.zeros(num_gpus))
    allreduce_bytes = (group_tokens * row_bytes(model, "bf16") if tp > 1
                       else np.zeros(num_gpus))
    if tp > 1:
        # A dense layer all-reduces twice (attention and MLP outputs); those layers run
        # outside the MoE layers' collectives, so their all-reduces are costed alone.
        dense_allreduce = 2.0 * allreduce_s(topo, tp, allreduce_bytes)
        dense_layer = dense_layer + dense_allreduce
        token_gpu = sequence_parallel_split(token_gpu, tp)
    tokens = np.bincount(token_gpu, minlength=num_gpus).astype(np.float64)
    head = (trailing * dense_layer + costs.head_s(shard, gpu, requests, prec)
            if options.include_head else np.zeros(num_gpus))
    experts = ExpertMap.from_placement(placement)
    token_bytes = row_bytes(model, prec.dispatch)  # one dispatched token copy
    loads = tuple(layer_load(routing, token_gpu, experts, token_bytes, where=f"MoE layer {i}",
                             gpus_per_node=topo.gpus_per_node, top_k=model.top_k)
                  for i, routing in enumerate(layers))
    # Every layer's [G, S] rows per expert slot, costed in one call: [L·G, S] -> [L, G].
    rows = np.concatenate([ld.rows_per_slot for ld in loads])
    experts_s = costs.expert_phase_s(model, gpu, rows, prec).reshape(len(loads), num_gpus)
    return _Plan(
        tokens=tokens, vision_s=vision, dense_before_s=np.outer(before, dense_layer),
        attention_s=attention, router_s=options.router_s * (tokens > 0),
        experts_s=experts_s,
        shared_s=costs.shared_experts_s(model, gpu, tokens, prec), head_s=head, loads=loads,
        exchange_bytes=tuple(r.exchange_bytes for r in layers),
        allreduce_bytes=allreduce_bytes)


class _Barrier:
    """Releases when all G GPUs have arrived: a count and one event (``env.all_of`` over
    G arrival events costs G events and a condition check per arrival, per layer)."""

    def __init__(self, env: simpy.Environment, num_gpus: int) -> None:
        self.event = env.event()
        self._left = num_gpus

    def arrive(self) -> simpy.Event:
        """One GPU arrives; returns the event to wait on."""
        self._left -= 1
        if self._left == 0:
            self.event.succeed()
        return self.event


@dataclass
class _LayerSim:
    """One MoE layer's SimPy objects: its two collectives and its barrier."""

    dispatch: Collective
    combine: Collective
    allreduce: Collective | None
    exchange: Collective | None
    barrier: _Barrier
    arrival_s: list[float]
    moe_start_s: list[float]
    start_s: float = 0.0
    end_s: float = 0.0


class _StepRun:
    """The SimPy side of one step: one process per GPU, the flow network, the phase log.

    Each GPU's process runs the whole step; layer l's barrier releases when every GPU has
    arrived (``_Barrier``), and a GPU waits on it before starting layer l + 1.
    """

    def __init__(self, env: simpy.Environment, topo: Topology, plan: _Plan,
                 options: SimOptions, dispatch_bytes: float, combine_bytes: float) -> None:
        self.env, self.topo, self.plan = env, topo, plan
        self.routes = build_routes(topo)
        if options.flow_solver == "fast" and options.flow_end_rtol == 0:
            from macssim.cost._flows_fast import FastCollective, FastFlowNetwork

            self.network = FastFlowNetwork(env, self.routes.capacity_bytes_per_s)
            self.collective = FastCollective
        else:
            self.network = FlowNetwork(env, self.routes.capacity_bytes_per_s,
                                       end_rtol=options.flow_end_rtol)
            self.collective = Collective
        self.log: list[tuple[int, int, int, float, float]] = []
        self.alltoall = alltoall_spec(topo, options)
        self.token_bytes = {"dispatch": dispatch_bytes, "combine": combine_bytes}
        self.tp = options.attention_tp
        # Plain-float copies: a process reads a handful of scalars per phase.
        self.dense_s = plan.dense_before_s.tolist()
        self.experts_s = plan.experts_s.tolist()
        self.attention_s = plan.attention_s.tolist()
        self.router_s = plan.router_s.tolist()
        self.shared_s = plan.shared_s.tolist()
        self.layers = [self._layer_sim(load, ex)
                       for load, ex in zip(plan.loads, plan.exchange_bytes, strict=True)]
        self.vision = self._barrier() if plan.vision_s.any() else None
        self.vision_end_s = 0.0
        self.head_start_s = 0.0

    def _barrier(self) -> _Barrier:
        return _Barrier(self.env, self.topo.num_gpus)

    def _layer_sim(self, load: LayerLoad, exchange_bytes: np.ndarray | None) -> _LayerSim:
        topo = self.topo
        dispatch, combine = (
            self.collective(self.env, self.network, self.routes,
                       build_legs(self.alltoall, topo.num_gpus, topo.gpus_per_node, load.counts,
                                  self.token_bytes[phase], phase),
                       topo.num_gpus)
            for phase in ("dispatch", "combine"))
        allreduce = (self.collective(self.env, self.network, self.routes,
                                allreduce_legs(topo, self.tp, self.plan.allreduce_bytes),
                                topo.num_gpus) if self.tp > 1 else None)
        exchange = (None if exchange_bytes is None else self.collective(
            self.env, self.network, self.routes, _all_gather_legs(topo, exchange_bytes),
            topo.num_gpus))
        barrier = self._barrier()
        layer = _LayerSim(dispatch, combine, allreduce, exchange, barrier,
                          [0.0] * topo.num_gpus, [0.0] * topo.num_gpus)
        barrier.event.callbacks.append(lambda _e: setattr(layer, "end_s", self.env.now))
        return layer

    def start(self) -> None:
        for g in range(self.topo.num_gpus):
            self.env.process(self._gpu(g))

    # --- one GPU's step -----------------------------------------------------------------

    def _gpu(self, g: int) -> Generator[simpy.Event, Any, None]:
        if self.vision is not None:
            yield from self._compute(-1, g, (_VISION, float(self.plan.vision_s[g])))
            yield self.vision.arrive()
            self.vision_end_s = self.env.now
        for layer, sim in enumerate(self.layers):
            sim.start_s = self.env.now
            yield from self._moe_layer(layer, g, sim)
            sim.arrival_s[g] = arrived = self.env.now
            yield sim.barrier.arrive()
            self.log.append((layer, g, _BARRIER, arrived, self.env.now))
        self.head_start_s = self.env.now
        yield from self._compute(len(self.layers), g, (_HEAD, float(self.plan.head_s[g])))

    def _moe_layer(self, layer: int, g: int, sim: _LayerSim
                   ) -> Generator[simpy.Event, Any, None]:
        dense = (_DENSE, self.dense_s[layer][g])
        attention = (_ATTENTION, self.attention_s[g])
        router = (_ROUTER, self.router_s[g])
        if sim.allreduce is None:
            starts = yield from self._compute(layer, g, dense, attention, router)
            sim.moe_start_s[g] = starts[2]
        else:
            yield from self._compute(layer, g, dense, attention)
            yield from self._communicate(layer, g, _ALLREDUCE, sim.allreduce)
            sim.moe_start_s[g] = self.env.now
            yield from self._compute(layer, g, router)
        if sim.exchange is not None:
            yield from self._communicate(layer, g, _EXCHANGE, sim.exchange)
        yield from self._communicate(layer, g, _DISPATCH, sim.dispatch)
        yield from self._compute(layer, g, (_EXPERTS, self.experts_s[layer][g]),
                                 (_SHARED, self.shared_s[g]))
        yield from self._communicate(layer, g, _COMBINE, sim.combine)

    def _compute(self, layer: int, g: int, *phases: tuple[int, float]
                 ) -> Generator[simpy.Event, Any, list[float]]:
        """Compute phases (phase, duration) back to back on GPU g: one timeout for all of
        them (none if they all last 0, as on a GPU without tokens), each phase starting
        where the one before ended. Returns the phases' start times."""
        starts, ends = [], []
        end = self.env.now
        for _, duration_s in phases:
            starts.append(end)
            if duration_s > 0:
                end = end + duration_s
            ends.append(end)
        if end > self.env.now:
            yield self.env.timeout(end - self.env.now)
            for i in range(len(phases)):   # the last end is the clock, to the last bit
                if ends[i] == end:
                    ends[i] = self.env.now
                if i + 1 < len(phases) and starts[i + 1] == end:
                    starts[i + 1] = self.env.now
        for (phase, _), start, stop in zip(phases, starts, ends, strict=True):
            self.log.append((layer, g, phase, start, stop))
        return starts

    def _communicate(self, layer: int, g: int, phase: int, collective: Collective
                     ) -> Generator[simpy.Event, Any, None]:
        start = self.env.now
        done = collective.join(g)
        if not done.triggered:
            yield done
        self.log.append((layer, g, phase, start, self.env.now))

    # --- results --------------------------------------------------------------------

    def result(self, step: int, step_kind: str, num_tokens: int) -> StepResult:
        plan, num_gpus = self.plan, self.topo.num_gpus
        layers, gpu_layers = [], []
        tokens = plan.tokens.astype(np.int64).tolist()
        for layer, sim in enumerate(self.layers):
            load = plan.loads[layer]
            assignments = load.assignments      # a property: summed once per layer
            arrival = np.array(sim.arrival_s) - sim.start_s
            latency = sim.end_s - sim.start_s
            # Attention ends, and the MoE layer starts, when the last GPU is done with
            # its attention (and all-reduce): the GPUs' router start, at the latest.
            attention = max(sim.moe_start_s) - sim.start_s
            padded = padded_rows(load.rows_per_slot, GROUPED_GEMM.tile_rows)
            hottest = (load.rows_per_slot.max(axis=1) if load.rows_per_slot.shape[1]
                       else np.zeros(num_gpus, np.int64)).tolist()
            padded_sum = padded.sum(axis=1).tolist()
            layers.append(LayerRecord(
                step=step, layer=layer, start_s=sim.start_s, end_s=sim.end_s,
                layer_latency_s=latency, attention_s=attention,
                moe_latency_s=latency - attention,
                straggler_delay_s=straggler_delay_s(arrival, attention),
                imbalance=imbalance(assignments), kept_assignments=load.kept,
                dropped_assignments=load.dropped,
                dispatch_bytes=float(load.dispatch_bytes.sum())))
            sent = load.dispatch_bytes.sum(axis=1).tolist()
            received = load.dispatch_bytes.sum(axis=0).tolist()
            per_gpu = zip(tokens, assignments.tolist(), load.active_experts.tolist(), hottest,
                          padded_sum, sent, received, arrival.tolist(), strict=True)
            gpu_layers.extend(GpuLayerRecord(
                step=step, layer=layer, gpu=g, tokens=t, expert_assignments=int(a),
                active_experts=int(n), hottest_expert_rows=int(h), padded_rows=int(pad),
                dispatch_sent_bytes=out, dispatch_received_bytes=into, arrival_s=at)
                for g, (t, a, n, h, pad, out, into, at) in enumerate(per_gpu))
        latency = self.env.now
        moe = sum(r.moe_latency_s for r in layers)
        return StepResult(
            step=step, step_kind=step_kind, topology=self.topo.name, num_gpus=num_gpus,
            gpus_per_node=self.topo.gpus_per_node, num_tokens=num_tokens,
            step_latency_s=latency, vision_s=self.vision_end_s,
            head_s=latency - self.head_start_s,
            attention_s=sum(r.attention_s for r in layers), moe_latency_s=moe,
            straggler_delay_s=sum(r.straggler_delay_s for r in layers),
            moe_share=moe / latency if latency > 0 else 0.0,
            tokens_per_s=num_tokens / latency if latency > 0 else 0.0,
            dispatch_bytes=sum(r.dispatch_bytes for r in layers), layers=tuple(layers),
            gpu_layers=tuple(gpu_layers), phase_table=np.array(self.log, dtype=PHASE_DTYPE))


def _all_gather_legs(topo: Topology, bytes_per_gpu: np.ndarray) -> Legs:
    """Every GPU sends its ``bytes_per_gpu`` to every other GPU (an all-gather, as NCCL
    runs it for small messages: one transfer per pair, at its size efficiency), both ends
    waiting for it."""
    g = topo.num_gpus
    if bytes_per_gpu.shape != (g,):
        raise MacssimError(f'LayerRouting: "exchange_bytes" has {bytes_per_gpu.size} entries, '
                           f"topology {topo.name!r} has {g} GPUs")
    pair = np.repeat(bytes_per_gpu[:, None], g, axis=1)
    counts = TokenCounts(pair_tokens=pair, assignment_pairs=pair,
                         node_tokens=np.zeros((g, topo.nodes)))
    return build_legs(AllToAllSpec("nccl"), g, topo.gpus_per_node, counts, 1.0, "dispatch")
