"""Traces: what a model's routers did, step by step (format v1, ``traces/README.md``),
model presets, and synthetic traces for when no GPU and no weights are at hand.

This is the public API of the stage; everything else in the folder is private.
"""

from macssim.trace._format import (
    FORMAT_VERSION,
    MODALITIES,
    Step,
    Trace,
    TraceWriter,
    open_trace,
    write_trace,
)
from macssim.trace._model import ExpertSet, ModelFacts, get_model_preset, list_model_presets

__all__ = [
    "FORMAT_VERSION",
    "MODALITIES",
    "ExpertSet",
    "ModelFacts",
    "Step",
    "Trace",
    "TraceWriter",
    "get_model_preset",
    "list_model_presets",
    "open_trace",
    "write_trace",
]
