"""Traces: what a model's routers did, step by step (formats v1 and v2,
``docs/trace-format.md``),
model presets, and synthetic traces for when no GPU and no weights are at hand.

This is the public API of the stage; everything else in the folder is private.
"""

from macssim.trace._format import (
    DEFAULT_TOP_N,
    FORMAT_VERSION,
    MODALITIES,
    SUPPORTED_VERSIONS,
    Step,
    Trace,
    TraceWriter,
    check_trace_target,
    open_trace,
    write_trace,
)
from macssim.trace._model import ExpertSet, ModelFacts, get_model_preset, list_model_presets
from macssim.trace._routing_model import RoutingKnobs, calibration_of, knobs_for_model
from macssim.trace._scenario import (
    RequestKind,
    Scenario,
    get_scenario,
    list_scenarios,
    load_scenario,
)
from macssim.trace._step import unscored_experts_per_gpu
from macssim.trace._summary import TraceSummary, summarize_trace
from macssim.trace._synth import (
    BYTES_PER_TOKEN_LAYER,
    SynthSummary,
    bytes_per_token_layer,
    estimate_trace_bytes,
    synthesize,
    synthetic_steps,
)

__all__ = [
    "DEFAULT_TOP_N",
    "FORMAT_VERSION",
    "MODALITIES",
    "SUPPORTED_VERSIONS",
    "ExpertSet",
    "ModelFacts",
    "RequestKind",
    "RoutingKnobs",
    "calibration_of",
    "knobs_for_model",
    "Scenario",
    "Step",
    "SynthSummary",
    "Trace",
    "TraceSummary",
    "TraceWriter",
    "check_trace_target",
    "get_model_preset",
    "get_scenario",
    "list_model_presets",
    "list_scenarios",
    "load_scenario",
    "open_trace",
    "summarize_trace",
    "synthesize",
    "estimate_trace_bytes",
    "bytes_per_token_layer",
    "BYTES_PER_TOKEN_LAYER",
    "synthetic_steps",
    "unscored_experts_per_gpu",
    "write_trace",
]
