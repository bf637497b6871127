"""Routing policies: how a MoE layer's tokens reach their experts under a capacity.

Each policy is one module with one pure tensor function (router scores [T, E] in, a
``DispatchPlan`` out), the same code on CPU and CUDA, no loop over tokens. Ask for one by
name: ``get_policy("macs", capacity_factor=1.0)(scores, top_k=8, token_gpu=...,
placement=..., modality=..., entropy=...)``.
"""

from macssim.policies._capacity import megatron_capacity
from macssim.policies._plan import YARDSTICK_DELTA, DispatchPlan, DropStats
from macssim.policies._registry import Policy, get_policy, list_policies
from macssim.policies._scope import SCOPES
from macssim.policies.expanded_drop import expanded_drop
from macssim.policies.labels import (
    ExpertLabelCounter,
    calibrate_expert_labels,
    expert_labels_from_trace,
)
from macssim.policies.macs import MacsParams, entropy_weights, macs
from macssim.policies.token_drop import token_drop
from macssim.policies.vanilla import vanilla

__all__ = [
    "DispatchPlan",
    "DropStats",
    "SCOPES",
    "YARDSTICK_DELTA",
    "ExpertLabelCounter",
    "MacsParams",
    "Policy",
    "calibrate_expert_labels",
    "entropy_weights",
    "expanded_drop",
    "expert_labels_from_trace",
    "get_policy",
    "list_policies",
    "macs",
    "megatron_capacity",
    "token_drop",
    "vanilla",
]
