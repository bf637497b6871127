"""``serve``: a serving run end to end. Arrivals (Poisson or a file) → the scheduler →
each step composed from its requests' recorded routing, planned by one policy and
simulated on the cluster (``simulate_step``) → per-request and per-run metrics.

Exact first: two steps of the same shape but different requests route differently, so a
cache keyed on the shape alone would change the answer, and there is none. The one cache
(``step_cache``, on by default) is keyed on everything the step is composed from (each
chunk's rank, recorded request, kind and positions): equal keys are equal inputs to the
policy and to ``simulate_step``, both deterministic, so a hit returns exactly what a
recomputation would. It pays where steps repeat (a request served alone, light load); a
miss costs one policy call and one ``simulate_step`` (docs/serve.md gives the times).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from macssim._errors import PolicyError
from macssim._threads import one_torch_thread
from macssim._validate import Limits, check_int, check_number
from macssim.cluster import (
    LayerRouting,
    SimOptions,
    alltoall_spec,
    sequence_parallel_split,
    simulate_step,
)
from macssim.cluster._load import ExpertMap
from macssim.cluster.metrics import PHASES
from macssim.cost import COSTS_CHOICES, PRECISION_PRESETS, check_precision, cost_model_for
from macssim.hardware import Topology, load_topology
from macssim.placement import PLACEMENTS, placements_from_trace
from macssim.policies import expert_labels_from_trace, get_policy
from macssim.policies._scope import local_expert_tables
from macssim.replay import package_versions, plans_for_step, torch_device
from macssim.serve._arrivals import Arrival, poisson_arrivals, read_arrivals
from macssim.serve._metrics import Sla, request_table, run_summary, step_table
from macssim.serve._routing import compose_step, recorded_requests, step_key
from macssim.serve._scheduler import (
    RequestSpec,
    Schedule,
    SchedulerConfig,
    ServeError,
    StepBatch,
    StepCost,
    run_scheduler,
)
from macssim.trace import ModelFacts, open_trace

__all__ = ["ServeConfig", "ServeResult", "serve"]

_COMPUTE_PHASES = np.array([PHASES.index(p) for p in (
    "vision", "dense", "attention", "router", "experts", "shared_experts", "head")])


@dataclass(frozen=True)
class ServeConfig:
    """Everything a serving run depends on; recorded verbatim in ``run.json``."""

    trace: Path
    """Trace whose requests' routing is replayed."""
    topology: str | Topology = "8xH100"
    """Preset name, topology YAML, or a ``Topology`` built in code; one data-parallel
    attention rank per GPU."""
    policy: str = "token-drop"
    """One policy for the whole run (``vanilla``, ``token-drop``, ``expanded-drop``,
    ``macs``)."""
    capacity_factor: float = 1.0
    """γ of a policy with a capacity."""
    policy_params: dict[str, Any] = field(default_factory=dict)
    """Extra parameters of the policy, e.g. ``{"rho": 1.0}``."""
    rate_per_s: float | None = 10.0
    """Poisson arrival rate (requests/s); ignored when ``arrivals`` is given."""
    num_requests: int = 32
    """Requests a Poisson run serves (request i replays the trace's request i mod R)."""
    arrivals: Path | None = None
    """CSV of arrival times (``arrival_s,request_id`` or ``arrival_s,trace_index``)."""
    output_tokens: int | None = None
    """Output tokens per request; None: what the trace recorded (1 + its decode rows)."""
    scheduler: SchedulerConfig = SchedulerConfig()
    sla: Sla = Sla()
    seed: int = 0
    """Seeds the arrivals and torch; the rest is deterministic."""
    device: str = "cpu"
    """Where the policy runs."""
    precision: str = "bf16"
    alltoall: str | None = None
    network_rtol: float = 0.0
    costs: str = "auto"
    tables: Path | None = None
    step_cache: bool = True
    """Reuse a step's cost when an identical step (same chunks of the same recorded
    requests on the same ranks) was simulated before in the run; exact (module docstring)."""
    placement: str = "contiguous"
    """Expert placement, as ``ReplayConfig.placement``: ``contiguous`` or ``eplb`` (planned
    per layer on the whole trace's loads)."""
    redundant_experts: int = 0
    """EPLB's extra expert slots (``placement="eplb"`` only)."""
    attention_tp: int = 1
    """``SimOptions.attention_tp``: 1 is data-parallel attention (one rank per GPU); t > 1
    runs attention tensor-parallel over groups of t GPUs, so the scheduler has G / t
    ranks, each a group (its tokens dispatched from the group's GPUs in even slices)."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("trace", "arrivals", "tables"):
            d[name] = None if d[name] is None else str(d[name])
        if isinstance(self.topology, Topology):
            d["topology"] = self.topology.source or self.topology.name
        return d


@dataclass
class ServeResult:
    """Plain records of one serving run; ``write_serve_report`` writes them."""

    config: ServeConfig
    model: ModelFacts
    topology: Topology
    trace_sha256: str
    schedule: Schedule
    requests: pd.DataFrame
    """One row per request: arrival, rank, lengths, queue_s, ttft_s, tpot_s,
    e2e_latency_s, meets_sla."""
    steps: pd.DataFrame
    """One row per served step."""
    summary: dict[str, Any]
    """The run's figures (``summary.csv``)."""
    replay: dict[str, Any] = field(default_factory=dict)
    """How the trace was replayed: requests recorded, decode rows cycled, the policy's
    parameters, the cost backend."""
    versions: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    """Seconds the run took on this machine."""


def _check_config(config: ServeConfig) -> None:
    where = "serve"
    if not isinstance(config.policy, str):
        raise PolicyError(f'{where}: "policy" must be one policy name, got {config.policy!r}')
    check_number(config.capacity_factor, where, "capacity_factor", low=0.0, low_open=True,
                 high=Limits.MAX_CAPACITY_FACTOR, error=PolicyError)
    if config.arrivals is None:
        # checked here too, so a bad rate is refused before the trace is read
        poisson_arrivals(config.rate_per_s, config.num_requests, 1, config.seed)
    if config.output_tokens is not None:
        check_int(config.output_tokens, where, "output_tokens", low=1, high=1 << 24,
                  error=ServeError)
    check_int(config.seed, where, "seed", low=0, high=Limits.MAX_SEED)
    if config.precision not in PRECISION_PRESETS:
        raise ServeError(f'{where}: "precision" must be one of {", ".join(PRECISION_PRESETS)}, '
                         f"got {config.precision!r}")
    if config.costs not in COSTS_CHOICES:
        raise ServeError(f'{where}: "costs" must be one of {", ".join(COSTS_CHOICES)}, got '
                         f"{config.costs!r}")
    if config.placement not in PLACEMENTS:
        raise ServeError(f'{where}: "placement" must be one of {", ".join(PLACEMENTS)}, got '
                         f"{config.placement!r}")
    check_int(config.redundant_experts, where, "redundant_experts", low=0, high=1 << 16,
              error=ServeError)
    check_int(config.attention_tp, where, "attention_tp", low=1, high=Limits.MAX_GPUS,
              error=ServeError)
    if config.redundant_experts and config.placement != "eplb":
        raise ServeError(f'{where}: "redundant_experts" needs placement eplb (contiguous '
                         "placement has no redundant slots)")


def serve(config: ServeConfig, progress: Callable[[int, float], None] | None = None,
          step_time: Callable[[StepBatch], StepCost | float] | None = None) -> ServeResult:
    """Serve requests replaying ``config.trace``'s routing on ``config.topology``.

    Args:
        progress: called as ``progress(steps_done, simulated_s)`` after each step.
        step_time: replaces the cluster simulation (tests: deterministic step times).
    Raises:
        MacssimError (ServeError, TraceError, TopologyError, PolicyError) for bad input,
        before any simulation where it can be known up front.
    """
    with one_torch_thread():
        return _serve(config, progress, step_time)


def _serve(config: ServeConfig, progress: Callable[[int, float], None] | None = None,
           step_time: Callable[[StepBatch], StepCost | float] | None = None) -> ServeResult:
    started = time.perf_counter()
    _check_config(config)
    device = torch_device(config.device)
    torch.manual_seed(config.seed)
    trace = open_trace(config.trace)
    model = trace.model
    topology = (config.topology if isinstance(config.topology, Topology)
                else load_topology(config.topology))
    recorded = recorded_requests(trace)
    if config.arrivals is not None:
        arrivals = read_arrivals(config.arrivals, [r.request_id for r in recorded])
    else:
        arrivals = poisson_arrivals(config.rate_per_s, config.num_requests, len(recorded),
                                    config.seed)
    requests = [_spec(a, recorded[a.trace_index], config.output_tokens) for a in arrivals]
    replays = [a.trace_index for a in arrivals]
    cycled = sum(max(0, r.output_tokens - 1 - recorded[i].decode_recorded)
                 for r, i in zip(requests, replays, strict=True))
    record: dict[str, Any] = {
        "trace_requests": len(recorded), "decode_tokens": sum(r.output_tokens - 1
                                                              for r in requests),
        "decode_tokens_with_cycled_routing": cycled,
        "trace_requests_without_decode_rows": sum(r.decode_recorded == 0 for r in recorded),
    }
    more: Callable[[], dict[str, Any]] = dict
    if step_time is None:
        step_time, more = _cluster_step_time(config, trace, model, topology, recorded,
                                             replays, device)
    timed = step_time
    if progress is not None:
        def timed(batch: StepBatch) -> StepCost | float:
            cost = step_time(batch)
            progress(batch.index + 1, cost if isinstance(cost, float) else cost.duration_s)
            return cost
    if topology.gpus_per_node % config.attention_tp:
        raise ServeError(f"serve: attention_tp = {config.attention_tp} must divide the "
                         f"{topology.gpus_per_node} GPUs of a node")
    schedule = run_scheduler(requests, topology.num_gpus // config.attention_tp, timed,
                             config.scheduler)
    record.update(more())
    return ServeResult(
        config=config, model=model, topology=topology, trace_sha256=trace.sha256(),
        schedule=schedule, requests=request_table(schedule, config.sla),
        steps=step_table(schedule),
        summary=run_summary(schedule, config.sla, topology.num_gpus), replay=record,
        versions=package_versions(), wall_s=time.perf_counter() - started)


def _spec(arrival: Arrival, rec, output_tokens: int | None) -> RequestSpec:
    out = output_tokens if output_tokens is not None else 1 + rec.decode_recorded
    return RequestSpec(arrival.arrival_s, rec.prompt_tokens, out)


def _cluster_step_time(config: ServeConfig, trace, model: ModelFacts, topology: Topology,
                       recorded, replays, device: torch.device):
    """``step_time`` backed by the policy and ``simulate_step``, and a function giving
    what to record once the run is over."""
    precision = PRECISION_PRESETS[config.precision]
    check_precision(topology, precision)
    costs, costs_record = cost_model_for(topology, tables=config.tables, costs=config.costs)
    layer_placements = placements_from_trace(config.placement, trace, topology.num_gpus,
                                             config.redundant_experts,
                                             gpus_per_node=topology.gpus_per_node)
    placement = layer_placements[0]
    per_layer = config.placement != "contiguous"
    # under EPLB each layer's map rides on its routing, and "local" counts replicas
    layer_maps = ([ExpertMap.from_placement(p) for p in layer_placements] if per_layer
                  else [None] * len(layer_placements))
    local_t = local_expert_tables(layer_placements).to(device) if per_layer else None
    params = dict(config.policy_params)
    if config.policy != "vanilla":
        params.setdefault("capacity_factor", config.capacity_factor)
    policy = get_policy(config.policy, **params)
    if policy.needs_scores and not trace.has("scores"):
        raise PolicyError(f"{config.trace}: policy {config.policy} needs router scores; the "
                          f"trace has fields {list(trace.fields)} (ids only)")
    if policy.needs_entropy and not trace.has("entropy"):
        raise PolicyError(f"{config.trace}: policy {config.policy} needs feature entropy; the "
                          f"trace has fields {list(trace.fields)}")
    labels = expert_labels_from_trace(trace) if config.policy == "macs" else None
    placement_t = torch.from_numpy(placement.expert_to_gpu).to(device)
    tp = config.attention_tp
    options = SimOptions(flow_end_rtol=config.network_rtol, alltoall=config.alltoall,
                         precision=precision, costs=costs, attention_tp=tp)

    cache: dict[tuple, StepCost] = {}
    counts = {"hits": 0, "misses": 0}

    def step_time(batch: StepBatch) -> StepCost:
        if not config.step_cache:
            return simulate(batch)
        key = step_key(batch.chunks, recorded, replays)
        cost = cache.get(key)
        if cost is None:
            counts["misses"] += 1
            cost = cache[key] = simulate(batch)
        else:
            counts["hits"] += 1
        return cost

    def simulate(batch: StepBatch) -> StepCost:
        step, token_gpu = compose_step(batch.index, batch.chunks, recorded, replays)
        if tp > 1:
            # A rank is a group of tp GPUs; a request's own work (its vision encoder) runs
            # on one of them, spread by request; attention runs on the whole group, and
            # the policies see the GPU each token is dispatched from (even slices).
            token_gpu = np.concatenate([np.full(c.count, c.rank * tp + c.request % tp,
                                                dtype=np.int64) for c in batch.chunks])
        policy_gpu = sequence_parallel_split(token_gpu, tp)
        routings = [LayerRouting(expert_ids=p.expert_ids.cpu().numpy(),
                                 kept=p.kept.cpu().numpy(),
                                 exchange_bytes=None if p.exchange_bytes is None
                                 else p.exchange_bytes.cpu().numpy(),
                                 experts=layer_maps[i])
                    for i, p in enumerate(plans_for_step(step, model, policy, placement_t,
                                                         labels, device, policy_gpu,
                                                         local_t))]
        result = simulate_step(topology, model, placement, step_kind=step.kind,
                               token_gpu=token_gpu, position=step.position,
                               modality=step.modality, layers=routings,
                               request_id=step.request_id, step_index=batch.index,
                               options=options)
        table = result.phase_table
        compute = np.isin(table["phase"], _COMPUTE_PHASES)
        busy = np.bincount(table["gpu"][compute],
                           weights=(table["end_s"] - table["start_s"])[compute],
                           minlength=topology.num_gpus)
        return StepCost(duration_s=result.step_latency_s,
                        gpu_busy_s=tuple(float(b) for b in busy),
                        moe_latency_s=result.moe_latency_s,
                        straggler_delay_s=result.straggler_delay_s)

    def more() -> dict[str, Any]:
        """Read after the run: the cost coverage counts the operations it answered."""
        return {"policy_params": dict(policy.params),
                "alltoall": alltoall_spec(topology, options).engine,
                "step_cache": {"on": config.step_cache, **counts},
                "costs": {**costs_record, **costs.coverage()}}

    return step_time, more
