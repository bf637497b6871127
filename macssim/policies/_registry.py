"""Policies by name, as the CLI and notebooks ask for them (``get_policy("macs", rho=1)``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from macssim._errors import PolicyError
from macssim.policies._plan import DispatchPlan
from macssim.policies.expanded_drop import expanded_drop
from macssim.policies.macs import MacsParams, macs
from macssim.policies.token_drop import token_drop
from macssim.policies.vanilla import vanilla

__all__ = ["Policy", "get_policy", "list_policies"]


def _macs_entry(scores, *, params: dict[str, Any], **kw) -> DispatchPlan:
    return macs(scores, params=MacsParams(**params), **kw)


# name -> (function, parameters it accepts, one-line description)
_POLICIES: dict[str, tuple[Callable[..., DispatchPlan], tuple[str, ...], str]] = {
    "vanilla": (vanilla, ("delta",), "plain top-k, no capacity (the accuracy reference)"),
    "token-drop": (token_drop, ("capacity_factor", "drop_policy", "delta"),
                   "CAI-MoE Token Drop: keep each expert's C highest-score assignments"),
    "expanded-drop": (expanded_drop, ("capacity_factor", "delta"),
                      "CAI-MoE Expanded Drop: overflow to next-best expert on the same GPU"),
    "macs": (_macs_entry, tuple(f.name for f in dataclasses.fields(MacsParams)),
             "MACS: entropy-weighted load, modality-adaptive capacity, semantic rerouting"),
}


def list_policies() -> dict[str, str]:
    """Name -> one-line description."""
    return {name: spec[2] for name, spec in _POLICIES.items()}


@dataclass(frozen=True)
class Policy:
    """A policy with its parameters bound; call it once per MoE layer and step.

    ``policy(scores, top_k=k, modality=..., entropy=..., placement=..., topk_ids=...,
    topk_weights=..., expert_labels=...)`` -> ``DispatchPlan``. Tensors may live on CPU
    or CUDA; the plan lives where ``scores`` does. Scores [B, T, E] (with entropy [B, T],
    topk_ids [B, T, k], expert_labels [B, E]) plan B layers of one step in one call, as
    ``macssim replay`` does: the same result as B calls, with far fewer kernel launches.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_scores(self) -> bool:
        """Whether the policy ranks or reroutes by the router's scores (id-only traces
        from vLLM/SGLang lack them)."""
        return not (self.name == "vanilla" or
                    (self.name == "token-drop" and self.params.get("drop_policy") == "position"))

    @property
    def needs_entropy(self) -> bool:
        return self.name == "macs"

    def __call__(self, scores: torch.Tensor | None, *, top_k: int,
                 placement: torch.Tensor | None = None, modality: torch.Tensor | None = None,
                 entropy: torch.Tensor | None = None, topk_ids: torch.Tensor | None = None,
                 topk_weights: torch.Tensor | None = None,
                 expert_labels: torch.Tensor | None = None,
                 num_experts: int | None = None) -> DispatchPlan:
        if scores is None:
            scores = self._scores_from_ids(topk_ids, num_experts)
        fn = _POLICIES[self.name][0]
        kw: dict[str, Any] = dict(top_k=top_k, modality=modality, entropy=entropy,
                                  topk_ids=topk_ids, topk_weights=topk_weights)
        if self.name in ("expanded-drop", "macs"):
            if placement is None:
                raise PolicyError(f'{self.name}: needs "placement" ([E] expert -> GPU) to '
                                  "reroute on the same GPU")
            kw["placement"] = placement
        if self.name == "macs":
            kw["expert_labels"] = expert_labels
            return fn(scores, params=self.params, **kw)
        return fn(scores, **kw, **self.params)

    def _scores_from_ids(self, topk_ids: torch.Tensor | None,
                         num_experts: int | None) -> torch.Tensor:
        """Id-only input: policies that never look at scores get a uniform stand-in."""
        if self.needs_scores:
            raise PolicyError(f"{self.name}: needs router scores over all experts to rank or "
                              "reroute; this trace has ids only (e.g. a vLLM/SGLang import). "
                              "Use vanilla or token-drop with drop_policy=position")
        if topk_ids is None or num_experts is None:
            raise PolicyError(f"{self.name}: without scores, pass topk_ids and num_experts")
        scores = torch.zeros(*topk_ids.shape[:-1], num_experts, device=topk_ids.device)
        scores.scatter_(-1, topk_ids.long(), 1.0 / topk_ids.shape[-1])
        return scores


def get_policy(name: str, **params: Any) -> Policy:
    """The policy ``name`` with ``params`` bound (e.g. ``capacity_factor=1.25``).

    Raises PolicyError for an unknown name (listing the known ones) or a parameter the
    policy does not take (listing the ones it does).
    """
    if name not in _POLICIES:
        raise PolicyError(f"unknown policy {name!r}; known: {', '.join(_POLICIES)}")
    accepted = _POLICIES[name][1]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise PolicyError(f"{name}: unknown parameter(s) {unknown}; it takes "
                          f"{', '.join(accepted) or 'none'}")
    if name == "macs":
        MacsParams(**params)  # validate now, not on the first call
    else:
        for key, value in params.items():
            if key in ("capacity_factor",) and not (isinstance(value, int | float)
                                                    and value > 0):
                raise PolicyError(f'{name}: "{key}" must be a number > 0, got {value!r}')
            if key == "drop_policy" and value not in ("probs", "position"):
                raise PolicyError(f'{name}: "drop_policy" must be probs or position, got '
                                  f"{value!r}")
    return Policy(name=name, params=dict(params))
