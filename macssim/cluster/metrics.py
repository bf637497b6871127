"""Every metric macssim reports, named and defined once.

``docs/metrics.md`` is this module's ``METRICS`` table written out (``metrics_markdown()``);
a test holds the two equal word for word. The simulator, the CSV columns and the plots use
these names and nothing else; the functions below are the formulas, used by the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Metric",
    "METRICS",
    "PHASES",
    "imbalance",
    "straggler_delay_s",
    "metrics_markdown",
]


@dataclass(frozen=True)
class Metric:
    """One reported quantity: its column name, unit, scope and definition."""

    name: str
    unit: str
    scope: str
    """What one value describes: ``layer`` (one MoE layer of one step), ``gpu-layer``,
    ``step``, ``run`` (a policy's summary over a whole replay or serving run), or
    ``request`` (one request of a serving run, ``macssim serve``)."""
    definition: str


METRICS: tuple[Metric, ...] = (
    Metric("tokens", "count", "gpu-layer",
           "Tokens whose attention runs on the GPU (data-parallel attention: whole requests "
           "per GPU)."),
    Metric("expert_assignments", "count", "gpu-layer",
           "Expert work of one GPU in one MoE layer: the kept token-expert assignments it "
           "computes (a token routed to two experts on the GPU counts twice; dropped "
           "assignments count nowhere)."),
    Metric("active_experts", "count", "gpu-layer",
           "Experts (physical slots) on the GPU with at least one kept assignment: the "
           "expert weights it reads from HBM, each paying the grouped GEMM's small-expert "
           "overhead (docs/cluster.md)."),
    Metric("hottest_expert_rows", "count", "gpu-layer",
           "Kept assignments of the GPU's busiest expert slot in the layer."),
    Metric("padded_rows", "count", "gpu-layer",
           "The GPU's expert rows after padding each slot's rows up to the grouped GEMM's "
           "row tile (64): the rows its expert FLOPs are counted on. `padded_rows` minus "
           "`expert_assignments` is padding waste."),
    Metric("dispatch_sent_bytes", "bytes", "gpu-layer",
           "Bytes the GPU's tokens send to other GPUs in the dispatch (it receives the same "
           "back in the combine)."),
    Metric("dispatch_received_bytes", "bytes", "gpu-layer",
           "Bytes other GPUs' tokens bring to the GPU's experts in the dispatch."),
    Metric("arrival_s", "s", "gpu-layer",
           "When a GPU reaches the layer's barrier, measured from the layer's start: its "
           "own work is done (attention, router, dispatch sent and received, its experts, "
           "the combine results it computed delivered)."),
    Metric("imbalance", "ratio", "layer",
           "Max over GPUs / mean over GPUs of the layer's expert work (`expert_assignments`), "
           "as TensorRT-LLM's EP load balancer defines it; 1.0 is perfectly balanced; 1.0 "
           "as well when no assignment is kept."),
    Metric("straggler_delay_s", "s", "layer",
           "Time the layer's barrier waits for the slowest GPU beyond the mean GPU, within "
           "the MoE layer: `end_s` minus the mean over GPUs of each GPU's arrival at the "
           "barrier, an arrival before the MoE layer's start (the slowest attention's end) "
           "counted at that start. So 0 <= `straggler_delay_s` <= (G−1)/G · "
           "`moe_latency_s` on G GPUs: zero when every GPU arrives together, the upper "
           "bound when all GPUs but one are done before the MoE layer starts. Why this "
           "form: max minus mean (not max minus min), so one idle GPU does not set it; "
           "counted from the MoE layer's start, so attention imbalance, which "
           "`attention_s` already holds, is not counted again and the delay is a part of "
           "`moe_latency_s`."),
    Metric("start_s", "s", "layer",
           "When the layer starts (the previous barrier's release), from the step's start."),
    Metric("end_s", "s", "layer",
           "When the layer's barrier releases, from the step's start."),
    Metric("layer_latency_s", "s", "layer",
           "`end_s` minus `start_s`."),
    Metric("attention_s", "s", "layer",
           "Attention time of the layer: the longest GPU's attention phase (plus the dense "
           "decoder layers that run before this MoE layer, if the model has any)."),
    Metric("moe_latency_s", "s", "layer",
           "MoE-layer latency: `layer_latency_s` minus `attention_s`, the part of the layer "
           "from the slowest attention's end to the barrier (router and policy, dispatch, "
           "experts, combine, waiting)."),
    Metric("kept_assignments", "count", "layer",
           "Token-expert assignments the policy kept (the sum of `expert_assignments`)."),
    Metric("dropped_assignments", "count", "layer",
           "Token-expert assignments the policy dropped: computed nowhere, sent nowhere."),
    Metric("dispatch_bytes", "bytes", "layer",
           "Bytes the dispatch all-to-all moves between GPUs: each kept token travels once "
           "to each other GPU holding at least one of its kept experts, hidden size × bytes "
           "per element; tokens whose experts are all on their own GPU move nothing. The "
           "combine moves the same bytes back. At step scope, the sum over layers."),
    Metric("vision_s", "s", "step",
           "Vision encoder time (prefill steps): until the last GPU has encoded its image and "
           "video tokens."),
    Metric("head_s", "s", "step",
           "Output head time: trailing dense layers and the LM head, one logit row per "
           "request."),
    Metric("step_latency_s", "s", "step",
           "Simulated time of one forward step: vision encoder (prefill), every layer, "
           "the output head."),
    Metric("moe_share", "fraction", "step",
           "Sum of the step's `moe_latency_s` over its `step_latency_s`: what a straggler "
           "saving is worth end to end."),
    Metric("requests", "count", "step",
           "Requests with tokens in the step (a prefill's prompts; a decode step's live "
           "sequences)."),
    Metric("tokens_per_s", "tokens/s", "step",
           "Tokens in the step (prompt tokens for a prefill, one per request for a decode "
           "step) over `step_latency_s`."),
    Metric("dropped_assignments_frac", "fraction", "layer",
           "Token-expert assignments the policy dropped over all T·k assignments (per "
           "modality with a `_<modality>` suffix)."),
    Metric("dropped_gate_mass_frac", "fraction", "layer",
           "Router gate weight of the dropped assignments over the gate weight of all "
           "assignments."),
    Metric("dropped_semantic_mass_frac", "fraction", "layer",
           "Dropped assignments weighted by their token's MACS semantic weight w(x) (1 for "
           "text; sigmoid(−δ·H̃) for visual tokens, default δ, for every policy) over all "
           "assignments so weighted."),
    Metric("rerouted_assignments", "count", "layer",
           "Assignments the policy moved to another expert on the same GPU (kept)."),
    Metric("tokens_lost_all", "count", "layer",
           "Tokens none of whose k assignments was kept."),
    Metric("straggler_share", "fraction", "run",
           "Sum of `straggler_delay_s` over sum of `moe_latency_s`: the part of MoE time "
           "spent waiting for the slowest GPU (in a serving run, summed over its steps)."),
    Metric("tokens_per_s_per_gpu", "tokens/s", "run",
           "Sweep report: a configuration's `tokens_per_s` over all steps divided by its "
           "GPUs (the y axis of the Pareto front)."),
    Metric("tokens_per_s_per_user", "tokens/s", "run",
           "Sweep report: 1 / mean `step_latency_s` of the decode steps, the rate at which "
           "each live sequence gets its tokens (all steps when the trace has no decode "
           "step; the x axis of the Pareto front)."),
    Metric("<metric>_vs_token_drop", "ratio", "run",
           "A policy's summary figure over token-drop's, from the same replay."),
    Metric("queue_s", "s", "request",
           "Serving: from the request's arrival to the start of the first step that runs "
           "any of its tokens."),
    Metric("ttft_s", "s", "request",
           "Serving: time to first token, from the request's arrival to the end of the "
           "step that runs the last chunk of its prompt (that step yields the first output "
           "token)."),
    Metric("tpot_s", "s", "request",
           "Serving: time per output token after the first, (`e2e_latency_s` − `ttft_s`) / "
           "(output tokens − 1), as vLLM's benchmark defines it; empty for a request with "
           "one output token."),
    Metric("e2e_latency_s", "s", "request",
           "Serving: from the request's arrival to the end of the step that yields its "
           "last output token."),
    Metric("meets_sla", "bool", "request",
           "Serving: `ttft_s` <= the SLA's TTFT and `tpot_s` <= the SLA's TPOT (a request "
           "with no `tpot_s` meets that part)."),
    Metric("duration_s", "s", "run",
           "Serving: from the first request's arrival to the last request's last token."),
    Metric("requests_per_s", "requests/s", "run",
           "Serving: requests served over `duration_s`."),
    Metric("output_tokens_per_s", "tokens/s", "run",
           "Serving: output tokens of all requests over `duration_s`."),
    Metric("total_tokens_per_s", "tokens/s", "run",
           "Serving: prompt and output tokens of all requests over `duration_s`."),
    Metric("sla_attainment", "fraction", "run",
           "Serving: requests with `meets_sla` over all requests."),
    Metric("goodput_requests_per_s", "requests/s", "run",
           "Serving: requests with `meets_sla` over `duration_s` (DistServe's goodput)."),
    Metric("gpu_utilisation", "fraction", "run",
           "Serving: GPU-seconds spent computing (the phases vision, dense, attention, "
           "router, experts, shared_experts, head of every step; not all-reduce, "
           "dispatch, combine, barrier, nor time with no step running) over GPUs × "
           "`duration_s`. With a stub step time (tests), a step counts as computing on "
           "every GPU for its whole length."),
    Metric("max_waiting", "requests", "run",
           "Serving: the longest queue, over all ranks, seen at a step's start after the "
           "step was formed."),
    Metric("<request metric>_{mean,p50,p90,p99}", "as the metric", "run",
           "Serving: mean and percentiles over requests of `ttft_s`, `tpot_s`, "
           "`e2e_latency_s` (requests with no `tpot_s` left out of its figures)."),
)
"""At step scope, ``attention_s``, ``moe_latency_s`` and ``straggler_delay_s`` are sums
over the step's layers."""

PHASES: tuple[str, ...] = (
    "vision", "dense", "attention", "allreduce", "router", "exchange", "dispatch",
    "experts", "shared_experts", "combine", "barrier", "head",
)
"""Phases of a step on one GPU, in the order they run. ``vision`` runs before the first
MoE layer on prefill steps, ``head`` (trailing dense layers and the LM head) after the
last; the others repeat per MoE layer. ``allreduce`` is the attention output's all-reduce
of tensor-parallel attention (absent with data-parallel attention); ``exchange`` the
all-gather a policy with one capacity over the whole step needs before dispatch (absent
for per-GPU capacities). ``barrier`` is
the wait from a GPU's arrival to the layer's release."""


def imbalance(expert_assignments: np.ndarray) -> float:
    """``imbalance`` of one layer. ``expert_assignments``: [G] kept assignments per GPU."""
    work = np.asarray(expert_assignments, dtype=np.float64)
    mean = float(work.mean()) if work.size else 0.0
    return float(work.max()) / mean if mean > 0 else 1.0


def straggler_delay_s(arrival_s: np.ndarray, moe_start_s: float = 0.0) -> float:
    """``straggler_delay_s`` of one layer: max minus mean of the GPUs' arrivals, each
    counted from no earlier than the MoE layer's start.

    Args:
        arrival_s: [G] arrivals at the barrier, from the layer's start.
        moe_start_s: when the MoE layer starts, from the layer's start (the layer's
            ``attention_s``); 0 counts arrivals as they are.
    """
    arrival = np.maximum(np.asarray(arrival_s, dtype=np.float64), moe_start_s)
    return float(arrival.max() - arrival.mean()) if arrival.size else 0.0


def metrics_markdown() -> str:
    """``docs/metrics.md``, generated from ``METRICS``."""
    lines = [
        "# Metrics",
        "",
        "Every number macssim reports, defined once. Generated from",
        "`macssim/cluster/metrics.py` (`metrics_markdown()`); a test keeps the two equal.",
        "",
        "| name | unit | scope | definition |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{m.name}` | {m.unit} | {m.scope} | {m.definition} |" for m in METRICS]
    lines += ["", "At step scope, `attention_s`, `moe_latency_s`, `straggler_delay_s` and "
              "`dispatch_bytes` are sums over the step's layers."]
    lines += ["", "Phases of a step on one GPU, in order: "
              + ", ".join(f"`{p}`" for p in PHASES) + ".", ""]
    return "\n".join(lines)
