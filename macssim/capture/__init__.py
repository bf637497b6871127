"""Capture: routing from real MoE models into traces (format v1).

Torch hooks on a Hugging Face transformers model's routers record, for every forward call,
what each token's router chose (top-k ids and weights, scores over all experts), the
feature entropy of the MoE layer's input and each token's modality; importers turn what
serving engines export (vLLM, SGLang) into the same format.

This is the public API of the stage; everything else in the folder is private.
``import macssim.capture`` does not import transformers: it is loaded when first needed.
"""

from macssim.capture._capture import CaptureResult, CaptureSettings, capture_trace
from macssim.capture._families import Family, get_family, list_families
from macssim.capture._hooks import RoutingRecorder, feature_entropy, record_routing
from macssim.capture._import import ImportResult, import_sglang, import_vllm
from macssim.capture._load import facts_for, load_model
from macssim.capture._prompts import Prompt, builtin_prompts, load_inputs
from macssim.capture._tiny import TinyRequest, build_tiny_model, tiny_batch

__all__ = [
    "CaptureResult",
    "CaptureSettings",
    "Family",
    "ImportResult",
    "Prompt",
    "RoutingRecorder",
    "TinyRequest",
    "build_tiny_model",
    "builtin_prompts",
    "capture_trace",
    "facts_for",
    "feature_entropy",
    "get_family",
    "import_sglang",
    "import_vllm",
    "list_families",
    "load_inputs",
    "load_model",
    "record_routing",
    "tiny_batch",
]
