from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from macssim import __version__
from macssim._errors import MacssimError, PolicyError
from macssim._threads import one_torch_thread
from macssim._validate import (
    Limits,
    brief,
    check_int,
    check_number,
    cuda_problem,
)
from macssim.cluster import (
    LayerRouting,
    RequestAssigner,
    SimOptions,
    alltoall_spec,
    chrome_trace,
    sequence_parallel_split,
    simulate_step,
)
from macssim.cluster._load import ExpertMap
from macssim.cost import COSTS_CHOICES, PRECISION_PRESETS, check_precision, cost_model_for
from macssim.hardware import ENGINES, Topology, load_topology
from macssim.placement import PLACEMENTS, Placement, placements_from_trace
from macssim.policies import DropStats, Policy, expert_labels_from_trace, get_policy
from macssim.policies._scope import local_expert_tables
from macssim.trace import MODALITIES, ModelFacts, Step, open_trace, unscored_experts_per_gpu

__all__ = ["BASELINE_POLICY", "ReplayConfig", "ReplayResult", "package_versions",
           "plans_for_step", "replay", "torch_device"]

BASELINE_POLICY = "token-drop"
"""Always replayed: every summary figure is also given as a ratio to it."""


@dataclass(frozen=True)
class ReplayConfig:
    """Everything a replay depends on; recorded verbatim in ``run.json``."""

    trace: Path
    """Trace file (format v1)."""
    policies: tuple[str, ...]
    """Policy names, replayed side by side on the same steps."""
    topology: str
    """Preset name (``8xH100``) or path to a topology YAML."""
    capacity_factor: float = 1.0
    """γ for every policy with a capacity."""
    policy_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Extra parameters per policy name, e.g. ``{"macs": {"rho": 1.0}}``."""
    max_steps: int | None = None
    """Replay only the first N steps."""
    calibration_trace: Path | None = None
    """Trace to calibrate MACS's expert labels on (default: the replayed trace)."""
    seed: int = 0
    """Seeds torch; the replay itself is deterministic."""
    device: str = "cpu"
    """Where the policies run (``cpu`` or ``cuda``)."""
    network_rtol: float = 0.0
    """``SimOptions.flow_end_rtol``: 0 is exact max-min; 0.02 runs 64-GPU steps ~3x faster
    and moves latency by ~1 %."""
    alltoall: str | None = None
    """All-to-all engine (``nccl``, ``deepep-normal``, ``deepep-ll``, ``ideal``); None: the
    topology's. ``replay`` records the engine that ran in the config it returns."""
    precision: str = "bf16"
    """Precision preset (``macssim.cluster.PRECISION_PRESETS``): ``bf16`` (every phase in
    BF16, the model before precisions), ``fp8-experts`` (routed and shared experts in
    FP8, FP8 dispatch, BF16 combine), ``fp8`` (also attention projections, dense MLP and
    LM head in FP8). FP8 compute needs the topology's ``gpu.fp8_flops_per_s``."""
    capacity_in_decode: bool = False
    """Apply the capacity policies to decode steps too. False (the default): decode steps
    route as vanilla, as CAI-MoE's code does (no capacity at sequence length 1, its
    generation path); MACS, which builds on it, follows. True: every step is capped (a
    decode step's few tokens per GPU then get C = 1 per expert, and Expanded Drop and MACS
    add every local expert to each token)."""
    jobs: int = 1
    """Worker processes simulating (policy, step) pairs side by side (policies run in the
    main process). 1: everything in this process. Results are the same for any value."""
    attention_tp: int = 1
    """``SimOptions.attention_tp``: 1 is data-parallel attention; t > 1 splits attention,
    dense layers and LM head over groups of t GPUs with an all-reduce."""
    costs: str = "auto"
    """Where compute costs come from: ``auto`` (the measured tables the topology names in
    ``cost_tables`` where they are found, else the roofline, said so), ``measured``
    (tables required), ``roofline``; docs/cost-tables.md."""
    tables: Path | None = None
    """Directory of measured tables in macssim's format (``gemm.csv``, ``moe.csv``, as
    ``macssim cost convert`` writes them); None: an installed aiconfigurator-core's."""
    placement: str = "contiguous"
    """Expert placement (``macssim.placement.PLACEMENTS``): ``contiguous`` (GPU g holds
    experts [g·E/G, (g+1)·E/G)) or ``eplb`` (DeepSeek's load balancer on the loads of
    the replayed steps, one placement per MoE layer; docs/policies.md)."""
    redundant_experts: int = 0
    """N extra expert slots EPLB fills with replicas of the hottest experts (E + N must
    be a multiple of the GPUs); 0 with ``contiguous``."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["trace"] = str(self.trace)
        d["calibration_trace"] = None if self.calibration_trace is None else str(
            self.calibration_trace)
        d["policies"] = list(self.policies)
        d["tables"] = None if self.tables is None else str(self.tables)
        return d


@dataclass
class ReplayResult:
    """Plain records of one replay; the report stage tabulates and plots them."""

    config: ReplayConfig
    model: ModelFacts
    topology: Topology
    trace_sha256: str
    policies: tuple[str, ...]
    """Policies replayed, the baseline included."""
    layers: pd.DataFrame
    """One row per policy × step × MoE layer."""
    steps: pd.DataFrame
    """One row per policy × step."""
    phases: pd.DataFrame | None
    """One row per policy × step × layer × GPU × phase: start_s, end_s (None when the
    replay streamed them to ``on_phases``)."""
    gpu_load: dict[str, np.ndarray]
    """Policy -> [L, G] kept assignments per MoE layer and GPU, summed over steps."""
    drops: pd.DataFrame
    """One row per policy × step kind × modality: totals of what the plans dropped."""
    timelines: dict[str, dict[str, Any]]
    """Policy -> Perfetto/Chrome trace document of the first step."""
    policy_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Policy -> the parameters it ran with, defaults and the added baseline included."""
    versions: dict[str, str] = field(default_factory=dict)
    costs: dict[str, Any] = field(default_factory=dict)
    """Which cost backend answered, why, and its coverage (what answered each operation:
    a table or the roofline, with the reason), for ``run.json``."""
    score_gaps: dict[str, Any] | None = None
    """On a trace that keeps only the top-N router scores (format v2's default), for the
    policies that rank a token's local experts by score (expanded-drop, macs): how many
    token-layers had an expert on their GPU without a kept score (read as 0, so no
    candidate), out of how many. None when every score is there or no such policy ran."""
    placements: tuple[Placement, ...] = ()
    """The expert placement of each MoE layer (every policy ran on the same)."""


def _check_config(config: ReplayConfig) -> None:
    """Everything in ``config`` that needs no file: refused before anything is read."""
    where = "replay"
    if not isinstance(config.policies, tuple | list) or not all(
            isinstance(p, str) for p in config.policies):
        raise PolicyError(f'{where}: "policies" must be a tuple of policy names, got '
                          f"{brief(config.policies)}")
    if not isinstance(config.policy_params, dict) or not all(
            isinstance(v, dict) for v in config.policy_params.values()):
        raise PolicyError(f'{where}: "policy_params" must map policy names to parameter '
                          f"dicts, got {brief(config.policy_params)}")
    check_number(config.capacity_factor, where, "capacity_factor", low=0.0, low_open=True,
                 high=Limits.MAX_CAPACITY_FACTOR, error=PolicyError)
    if config.max_steps is not None:
        check_int(config.max_steps, where, "max_steps", low=1, high=Limits.MAX_STEPS)
    check_int(config.seed, where, "seed", low=0, high=Limits.MAX_SEED)
    check_number(config.network_rtol, where, "network_rtol", low=0.0, high=1.0, high_open=True)
    check_int(config.attention_tp, where, "attention_tp", low=1, high=Limits.MAX_GPUS)
    check_int(config.jobs, where, "jobs", low=1, high=256)
    if not isinstance(config.capacity_in_decode, bool):
        raise MacssimError(f'{where}: "capacity_in_decode" must be true or false, got '
                           f"{brief(config.capacity_in_decode)}")
    if not isinstance(config.precision, str) or config.precision not in PRECISION_PRESETS:
        raise MacssimError(f'{where}: "precision" must be one of '
                           f'{", ".join(PRECISION_PRESETS)}, got {brief(config.precision)}')
    if not isinstance(config.costs, str) or config.costs not in COSTS_CHOICES:
        raise MacssimError(f'{where}: "costs" must be one of {", ".join(COSTS_CHOICES)}, got '
                           f"{brief(config.costs)}")
    if config.alltoall is not None and config.alltoall not in ENGINES:
        raise MacssimError(f'{where}: "alltoall" must be one of {", ".join(ENGINES)}, got '
                           f"{brief(config.alltoall)}")
    if not isinstance(config.placement, str) or config.placement not in PLACEMENTS:
        raise MacssimError(f'{where}: "placement" must be one of {", ".join(PLACEMENTS)}, got '
                           f"{brief(config.placement)}")
    check_int(config.redundant_experts, where, "redundant_experts", low=0,
              high=Limits.MAX_GPUS * 64)
    if config.redundant_experts and config.placement != "eplb":
        raise MacssimError(f'{where}: "redundant_experts" needs placement eplb (contiguous '
                           "places each expert once)")


def torch_device(name: object) -> torch.device:
    """``cpu``, or ``cuda`` / ``cuda:N`` when torch sees that GPU; anything else is a
    PolicyError saying what is available."""
    if not isinstance(name, str) or not re.fullmatch(r"cpu|cuda(:[0-9]{1,4})?", name):
        raise PolicyError(f'replay: "device" must be cpu or cuda (cuda:N for GPU N), got '
                          f"{brief(name)}")
    if name.startswith("cuda") and (problem := cuda_problem(name)):
        raise PolicyError(f"replay: device {name}: {problem}; use --device cpu")
    return torch.device(name)


def _build_policies(config: ReplayConfig, has_scores: bool) -> dict[str, Policy]:
    names = list(dict.fromkeys(config.policies))
    if not names:
        raise PolicyError("no policy given; known: vanilla, token-drop, expanded-drop, macs")
    unknown_params = set(config.policy_params) - set(names)
    if unknown_params:
        raise PolicyError(f"parameters given for policies not replayed: "
                          f"{brief(sorted(map(str, unknown_params)))} (replayed: "
                          f"{', '.join(names)})")
    params = {name: dict(config.policy_params.get(name, {})) for name in names}
    if BASELINE_POLICY not in names:
        # Added as the baseline of the ratios; an id-only trace (vLLM/SGLang import) has no
        # scores to rank by, so there it keeps the first C tokens (Megatron's "position").
        params[BASELINE_POLICY] = {} if has_scores else {"drop_policy": "position"}
    out = {}
    for name, p in params.items():
        if name != "vanilla":
            p.setdefault("capacity_factor", config.capacity_factor)
        out[name] = get_policy(name, **p)
    return out


def _tensor(a: np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(device)


def plans_for_step(step: Step, model: ModelFacts, policy: Policy, placement_t: torch.Tensor,
                   labels: np.ndarray | None, device: torch.device,
                   token_gpu: np.ndarray | None = None,
                   local_experts: torch.Tensor | None = None):
    """The policy's plan for every MoE layer of the step, all layers in one call (the
    serving run plans its composed steps with it too)."""
    plan = policy(
        _tensor(step.scores, device), top_k=model.top_k, placement=placement_t,
        modality=_tensor(step.modality, device), entropy=_tensor(step.entropy, device),
        topk_ids=_tensor(step.topk_ids, device), topk_weights=_tensor(step.topk_weights, device),
        expert_labels=_tensor(labels, device), num_experts=model.num_experts,
        token_gpu=_tensor(token_gpu, device), local_experts=local_experts)
    return plan.layers()


def replay(config: ReplayConfig,
           progress: Callable[[int, int], None] | None = None,
           on_phases: Callable[[pd.DataFrame], None] | None = None) -> ReplayResult:
    """Replay ``config.trace`` under each policy on ``config.topology``.

    Memory stays flat in the trace's length except for the per-layer and per-step rows:
    the trace is read one step at a time, and the per-phase rows (the bulk) go to
    ``on_phases`` when given.

    Args:
        progress: called as ``progress(done, total)`` after each policy × step.
        on_phases: receives each policy × step's phase rows instead of the result.
    Raises:
        MacssimError (TraceError, TopologyError, PolicyError) for bad input, before any
        simulation when it can be known up front.
    """
    with one_torch_thread():
        return _replay(config, progress, on_phases)


def _replay(config: ReplayConfig,
            progress: Callable[[int, int], None] | None = None,
            on_phases: Callable[[pd.DataFrame], None] | None = None) -> ReplayResult:
    _check_config(config)
    device = torch_device(config.device)
    torch.manual_seed(config.seed)
    trace = open_trace(config.trace)
    model = trace.model
    topology = load_topology(config.topology)
    precision = PRECISION_PRESETS[config.precision]
    check_precision(topology, precision)
    costs, costs_record = cost_model_for(topology, tables=config.tables, costs=config.costs)
    layer_placements = placements_from_trace(config.placement, trace, topology.num_gpus,
                                             config.redundant_experts,
                                             gpus_per_node=topology.gpus_per_node,
                                             steps=config.max_steps)
    # The step's placement is layer 0's; under EPLB each layer's own map rides on its
    # LayerRouting (every layer has (E + N)/G slots per GPU).
    placement = layer_placements[0]
    per_layer = config.placement != "contiguous"
    layer_maps = ([ExpertMap.from_placement(p) for p in layer_placements] if per_layer
                  else [None] * len(layer_placements))
    policies = _build_policies(config, trace.has("scores"))
    for name, policy in policies.items():
        if policy.needs_scores and not trace.has("scores"):
            raise PolicyError(f"{config.trace}: policy {name} needs router scores; the trace has "
                              f"fields {list(trace.fields)} (ids only). Use vanilla or "
                              "token-drop with drop_policy=position")
        if policy.needs_entropy and not trace.has("entropy"):
            raise PolicyError(f"{config.trace}: policy {name} needs feature entropy; the trace "
                              f"has fields {list(trace.fields)}")
    labels = None
    if "macs" in policies:
        calib = open_trace(config.calibration_trace) if config.calibration_trace else trace
        if calib.model.num_experts != model.num_experts or (
                calib.model.num_moe_layers != model.num_moe_layers):
            raise PolicyError(f"{calib.path}: calibration trace's model ({calib.model.name}) "
                              f"does not match the replayed trace's ({model.name})")
        labels = expert_labels_from_trace(calib)
    placement_t = torch.from_numpy(placement.expert_to_gpu).to(device)
    uncapped = get_policy("vanilla")
    ranked_local = [n for n in policies if n in _RANK_LOCAL_SCORES]
    score_gaps = ({"policies": ranked_local, "token_layers": 0, "of": 0,
                   "scores_kept_per_token": trace.scores_top_n}
                  if ranked_local and trace.has("scores") and not trace.scores_complete
                  else None)
    # Under EPLB, "local" to a policy is every expert with a replica on the token's GPU,
    # in that layer's placement.
    local_t = local_expert_tables(layer_placements).to(device) if per_layer else None
    num_steps = trace.num_steps if config.max_steps is None else min(config.max_steps,
                                                                      trace.num_steps)
    total = num_steps * len(policies)
    done = 0
    layer_rows: list[dict[str, Any]] = []
    step_rows: list[dict[str, Any]] = []
    phase_frames: list[pd.DataFrame] = []
    drop_tally: dict[tuple[str, str, str], dict[str, float]] = {}
    gpu_load = {name: np.zeros((model.num_moe_layers, topology.num_gpus), dtype=np.int64)
                for name in policies}
    chrome: dict[str, dict[str, Any]] = {}
    options = SimOptions(flow_end_rtol=config.network_rtol, alltoall=config.alltoall,
                         precision=precision, costs=costs, attention_tp=config.attention_tp)
    config = dataclasses.replace(config, alltoall=alltoall_spec(topology, options).engine)
    def record(name: str, step: Step, per_layer_drops: list, result) -> None:
        nonlocal done
        base = {"policy": name, "kind": step.kind, "tokens": step.num_tokens}
        for rec, drops in zip(result.layers, per_layer_drops, strict=True):
            layer_rows.append({**base, **rec.to_dict(), **_drop_columns(drops)})
        step_rows.append({**base, "requests": int(np.unique(step.request_id).size),
                          **result.to_dict()})
        for rec in result.gpu_layers:
            gpu_load[name][rec.layer, rec.gpu] += rec.expert_assignments
        phases = result.phases_frame()
        phases.insert(0, "policy", name)
        if on_phases is None:
            phase_frames.append(phases)
        else:
            on_phases(phases)
        if name not in chrome:
            chrome[name] = chrome_trace([result])
        done += 1
        if progress is not None:
            progress(done, total)

    def routed(policy: Policy, step: Step, policy_gpu: np.ndarray
               ) -> tuple[list[LayerRouting], list]:
        """The policy's routing of every MoE layer of the step, and each layer's drops."""
        plans = plans_for_step(step, model, policy, placement_t, labels, device, policy_gpu,
                               local_t)
        return ([LayerRouting(expert_ids=plan.expert_ids.cpu().numpy(),
                              kept=plan.kept.cpu().numpy(),
                              exchange_bytes=None if plan.exchange_bytes is None
                              else plan.exchange_bytes.cpu().numpy(), experts=layer_map)
                 for plan, layer_map in zip(plans, layer_maps, strict=True)],
                [plan.drops for plan in plans])

    def tasks():
        """(policy, step, its drops, simulate_step's per-step arguments or the name of an
        earlier policy of the same step whose routing was the same), in order."""
        # One assigner for the whole trace: a request keeps the GPU that holds its KV cache.
        assigner = RequestAssigner(topology.num_gpus)
        for step in trace:
            if step.index >= num_steps:
                break
            token_gpu = assigner.assign(step.request_id)
            # Each GPU's own tokens, as the policies' rank scope and "local" mean them: with
            # tensor-parallel attention, the group's tokens each GPU dispatches.
            policy_gpu = sequence_parallel_split(token_gpu, config.attention_tp)
            if score_gaps is not None:
                gaps = unscored_experts_per_gpu(step, placement.expert_to_gpu)
                if gaps is not None:
                    at = gaps[:, np.arange(step.num_tokens), policy_gpu]
                    score_gaps["token_layers"] += int(np.count_nonzero(at))
                    score_gaps["of"] += int(at.size)
            capped = step.kind == "prefill" or config.capacity_in_decode
            # Uncapped, every policy routes as vanilla: planned once for all of them.
            vanilla = None if capped else routed(uncapped, step, policy_gpu)
            simulated: list[tuple[str, list[LayerRouting]]] = []
            for name, policy in policies.items():
                routings, per_layer_drops = (routed(policy, step, policy_gpu) if capped
                                             else vanilla)
                for drops in per_layer_drops:
                    _tally(drop_tally, (name, step.kind), drops)
                twin = next((earlier for earlier, r in simulated
                             if _same_routing(r, routings)), None)
                if twin is not None:
                    yield name, step, per_layer_drops, twin
                    continue
                simulated.append((name, routings))
                yield name, step, per_layer_drops, dict(
                    step_kind=step.kind, token_gpu=token_gpu, position=step.position,
                    modality=step.modality, layers=routings, request_id=step.request_id,
                    step_index=step.index)

    # A policy whose routing equals an earlier policy's on the same step (every decode
    # step when capacity is off there) reuses that simulation: the step is a pure
    # function of its inputs, so the result is the same, at no cost.
    worker_counts: dict[int, dict] = {}
    twins = _Twins()
    if config.jobs == 1:
        for name, step, per_layer_drops, args in tasks():
            result = twins.get(args) if isinstance(args, str) else twins.keep(
                step.index, name, simulate_step(topology, model, placement, options=options,
                                                **args))
            record(name, step, per_layer_drops, result)
        coverage = costs.coverage()
    else:
        for name, step, per_layer_drops, outcome in _in_workers(
                config.jobs, (topology, model, placement, options), tasks()):
            if isinstance(outcome, str):
                result = twins.get(outcome)
            else:
                result, pid, counts = outcome
                worker_counts[pid] = counts
                twins.keep(step.index, name, result)
            record(name, step, per_layer_drops, result)
        coverage = _merged_coverage(costs.coverage(), worker_counts.values())
    drops = pd.DataFrame([{"policy": p, "kind": kind, "modality": m, **v}
                          for (p, kind, m), v in drop_tally.items()])
    return ReplayResult(
        config=config, model=model, topology=topology, trace_sha256=trace.sha256(),
        policies=tuple(policies), layers=pd.DataFrame(layer_rows),
        steps=pd.DataFrame(step_rows),
        phases=pd.concat(phase_frames, ignore_index=True) if phase_frames else None,
        gpu_load=gpu_load,
        drops=drops, timelines=chrome, versions=package_versions(), score_gaps=score_gaps,
        costs={**costs_record, **coverage},
        policy_params={name: dict(p.params) for name, p in policies.items()},
        placements=tuple(layer_placements))


_DROP_FIELDS = tuple(f.name for f in dataclasses.fields(DropStats))

_RANK_LOCAL_SCORES = ("expanded-drop", "macs")
"""Policies whose candidates include every expert on the token's GPU, ranked by score:
on a top-N trace they cannot rank the unscored ones (``ReplayResult.score_gaps``)."""


class _Twins:
    """The current step's simulated results by policy, for the policies whose routing
    repeats an earlier one's (``tasks`` names the twin)."""

    def __init__(self) -> None:
        self._step = -1
        self._results: dict[str, Any] = {}

    def keep(self, step: int, name: str, result: Any) -> Any:
        if step != self._step:
            self._step, self._results = step, {}
        self._results[name] = result
        return result

    def get(self, name: str) -> Any:
        return self._results[name]


def _same_routing(a: list[LayerRouting], b: list[LayerRouting]) -> bool:
    """Whether two policies' routings of one step are the same, layer for layer (the rest
    of the step's inputs are shared)."""
    def same(x: np.ndarray | None, y: np.ndarray | None) -> bool:
        return x is y or (x is not None and y is not None and np.array_equal(x, y))

    return all(same(p.expert_ids, q.expert_ids) and same(p.kept, q.kept)
               and same(p.exchange_bytes, q.exchange_bytes) and p.experts is q.experts
               for p, q in zip(a, b, strict=True))


def _tally(tally, key: tuple[str, str], drops) -> None:
    for modality in drops.tokens:
        row = tally.setdefault((*key, modality), dict.fromkeys(_DROP_FIELDS, 0.0))
        for f in _DROP_FIELDS:
            row[f] += getattr(drops, f)[modality]


def _drop_columns(drops) -> dict[str, float]:
    """Per-layer drop fractions, overall and per modality present."""
    cols = {"dropped_assignments_frac": drops.frac("assignments"),
            "dropped_gate_mass_frac": drops.frac("gate_mass"),
            "dropped_semantic_mass_frac": drops.frac("semantic_mass"),
            "rerouted_assignments": drops.total("rerouted_assignments"),
            "tokens_lost_all": drops.total("tokens_lost_all"),
            "tokens_lost_all_frac": drops.total("tokens_lost_all") / max(drops.total("tokens"), 1)}
    for m in MODALITIES:
        if m in drops.tokens:
            cols[f"dropped_semantic_mass_frac_{m}"] = drops.frac("semantic_mass", m)
    return cols


def package_versions() -> dict[str, str]:
    """The versions a run's record states (``run.json``): macssim, Python and the packages
    that decide its numbers."""
    import platform

    import simpy

    return {"macssim": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "simpy": simpy.__version__,
            "pandas": pd.__version__}


# ---------------------------------------------------------------------------------------
# Simulating in worker processes

_SHARED: tuple | None = None
"""(topology, model, placement, options) of the replay the workers serve: set before the
pool forks, so each worker inherits it instead of unpickling it per task."""


def _start_worker() -> None:
    torch.set_num_threads(1)   # the workers simulate; torch threads would only contend


def _simulate(args: dict) -> tuple[Any, int, dict | None]:
    import os

    topology, model, placement, options = _SHARED
    result = simulate_step(topology, model, placement, options=options, **args)
    return result, os.getpid(), options.costs.coverage().get("operations")


def _in_workers(jobs: int, shared: tuple, tasks):
    """``tasks`` (name, step, drops, args) simulated on ``jobs`` forked workers, yielded in
    order as (name, step, drops, (result, worker pid, its cost counts so far)); a task
    whose args name an earlier twin is passed through as that name. At most 2·jobs in
    flight, so memory stays flat."""
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    global _SHARED
    _SHARED = shared
    pending: deque = deque()
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_start_worker) as pool:
            for name, step, drops, args in tasks:
                pending.append((name, step, drops, args if isinstance(args, str)
                                else pool.submit(_simulate, args)))
                while len(pending) > 2 * jobs:
                    name0, step0, drops0, future = pending.popleft()
                    yield name0, step0, drops0, _outcome(future)
            while pending:
                name0, step0, drops0, future = pending.popleft()
                yield name0, step0, drops0, _outcome(future)
    finally:
        _SHARED = None


def _outcome(future):
    """A worker's (result, pid, counts), or the name of the earlier twin it stands for."""
    return future if isinstance(future, str) else future.result()


def _merged_coverage(coverage: dict, worker_counts) -> dict:
    """The main process's coverage record with the workers' operation counts summed in
    (each worker's counts are cumulative, so its last report is its total)."""
    counts = [c for c in worker_counts if c]
    if not counts:
        return coverage
    total: dict[str, dict[str, int]] = {}
    for ops in counts:
        for op, hows in ops.items():
            for how, n in hows.items():
                total.setdefault(op, {})[how] = total.get(op, {}).get(how, 0) + n
    return {**coverage, "operations": {op: dict(sorted(h.items()))
                                       for op, h in sorted(total.items())}}
