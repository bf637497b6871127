"""Tensor-parallel attention: what one GPU of a TP group holds and which tokens it sends.

With attention split over t GPUs (Megatron-style: heads, the dense MLP's intermediate
dimension and the LM head's vocabulary divided t ways), each GPU runs the group's tokens
through 1/t of the weights. The cost backends need no TP knowledge: they cost a model
whose shapes are one GPU's shard.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from macssim._errors import MacssimError
from macssim.trace import ModelFacts

__all__ = ["sequence_parallel_split", "tensor_parallel_shard"]


def tensor_parallel_shard(model: ModelFacts, tp: int) -> ModelFacts:
    """One GPU's share of attention, dense MLP and LM head under ``tp``-way tensor
    parallelism. KV heads fewer than ``tp`` are replicated (one per GPU), as vLLM and
    SGLang do; query heads must divide evenly."""
    if tp == 1:
        return model
    if model.num_attention_heads % tp:
        raise MacssimError(f"attention_tp = {tp} does not divide the {model.num_attention_heads} "
                           f"attention heads of {model.name!r}")
    return dataclasses.replace(
        model, num_attention_heads=model.num_attention_heads // tp,
        num_kv_heads=max(1, model.num_kv_heads // tp),
        dense_intermediate_size=-(-model.dense_intermediate_size // tp),
        vocab_size=-(-model.vocab_size // tp))


def sequence_parallel_split(token_gpu: np.ndarray, tp: int) -> np.ndarray:
    """The GPU each token is dispatched from: a group's tokens (in step order) split into
    ``tp`` contiguous, even slices over the group's GPUs, after the all-reduce has given
    every GPU of the group every token."""
    group = token_gpu // tp
    order = np.argsort(group, kind="stable")
    counts = np.bincount(group)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_group = np.arange(token_gpu.size) - np.repeat(starts, counts)
    out = np.empty_like(token_gpu)
    out[order] = group[order] * tp + rank_in_group * tp // np.repeat(counts, counts)
    return out
