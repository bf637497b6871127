"""Policies by name, as the CLI and notebooks ask for them (``get_policy("macs", rho=1)``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from macssim._errors import PolicyError
from macssim._validate import (
    Limits,
    brief,
    check_choice,
    check_number,
    finite_range_text,
)
from macssim.policies._plan import DispatchPlan
from macssim.policies._scope import SCOPES
from macssim.policies.expanded_drop import expanded_drop
from macssim.policies.macs import MacsParams, macs
from macssim.policies.token_drop import token_drop
from macssim.policies.vanilla import vanilla

__all__ = ["ParamSpec", "Policy", "check_policy_params", "get_policy", "list_policies",
           "policy_parameters"]


def _macs_entry(scores, *, params: dict[str, Any], **kw) -> DispatchPlan:
    return macs(scores, params=MacsParams(**params), **kw)


# name -> (function, parameters it accepts, one-line description)
_POLICIES: dict[str, tuple[Callable[..., DispatchPlan], tuple[str, ...], str]] = {
    "vanilla": (vanilla, (), "plain top-k, no capacity (the accuracy reference)"),
    "token-drop": (token_drop, ("capacity_factor", "drop_policy", "scope"),
                   "CAI-MoE Token Drop: keep each expert's C highest-score assignments"),
    "expanded-drop": (expanded_drop, ("capacity_factor", "scope"),
                      "CAI-MoE Expanded Drop: top-k plus the token's GPU's experts, each "
                      "expert keeps its C best"),
    "macs": (_macs_entry, tuple(f.name for f in dataclasses.fields(MacsParams)),
             "MACS: entropy-weighted load, modality-adaptive capacity, local semantic "
             "rerouting"),
}


@dataclass(frozen=True)
class ParamSpec:
    """What one policy parameter accepts: a finite number in [low, high] (``low_open``:
    (low, high]), or one of ``choices``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] = ()

    def expected(self) -> str:
        """In the words of the error messages: ``a finite number > 0 and <= 1e+06``."""
        if self.choices:
            return f"one of {list(self.choices)}"
        return finite_range_text(self.low, self.high, low_open=self.low_open)

    def check(self, value: Any, where: str, name: str) -> Any:
        if self.choices:
            return check_choice(value, where, name, self.choices, error=PolicyError)
        return check_number(value, where, name, low=self.low, high=self.high,
                            low_open=self.low_open, error=PolicyError)


_GAMMA = ParamSpec(low=0.0, high=Limits.MAX_CAPACITY_FACTOR, low_open=True)
_KNOB = ParamSpec(low=0.0, high=1e6)
# Every parameter any policy takes; each policy takes the subset named in _POLICIES.
_PARAMS: dict[str, ParamSpec] = {
    "capacity_factor": _GAMMA,
    "delta": _KNOB,
    "drop_policy": ParamSpec(choices=("probs", "position")),
    "rho": _KNOB,
    "eps": ParamSpec(low=1e-12, high=1e6),  # > 0, and still > 0 once cast to float32
    "min_capacity": _KNOB,
    "capacity_basis": ParamSpec(choices=("tokens", "weight")),
    "scope": ParamSpec(choices=SCOPES),
}


def list_policies() -> dict[str, str]:
    """Name -> one-line description."""
    return {name: spec[2] for name, spec in _POLICIES.items()}


def policy_parameters(name: str) -> dict[str, ParamSpec]:
    """The parameters policy ``name`` takes, with what each accepts."""
    _known(name)
    return {p: _PARAMS[p] for p in _POLICIES[name][1]}


def _known(name: Any) -> None:
    if not isinstance(name, str) or name not in _POLICIES:
        raise PolicyError(f"unknown policy {brief(name)}; known: {', '.join(_POLICIES)}")


def check_policy_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` checked against what policy ``name`` takes: known names, finite numbers
    in range, strings among the choices. Returns them normalised (numbers as float).

    Raises PolicyError naming the policy, the parameter and what it accepts."""
    _known(name)
    accepted = _POLICIES[name][1]
    unknown = sorted(map(str, set(params) - set(accepted)))
    if unknown:
        raise PolicyError(f"{name}: unknown parameter(s) {brief(unknown)}; it takes "
                          f"{', '.join(accepted) or 'none'}")
    out: dict[str, Any] = {}
    for key, value in params.items():
        checked = _PARAMS[key].check(value, name, key)
        out[key] = float(checked) if isinstance(checked, int | float) else checked
    return out


@dataclass(frozen=True)
class Policy:
    """A policy with its parameters bound; call it once per MoE layer and step.

    ``policy(scores, top_k=k, token_gpu=..., placement=..., modality=..., entropy=...,
    topk_ids=..., topk_weights=..., expert_labels=...)`` -> ``DispatchPlan``. The
    capacity policies need ``token_gpu`` ([T], the GPU each token is dispatched from)
    and ``placement`` ([E] expert -> GPU), passed as data so that policies never import
    the cluster; with a replicated placement (EPLB), ``local_experts`` ([G, M],
    ``local_expert_table``) names every GPU's experts, replicas included, which is what
    "local" means to expanded-drop and macs. Tensors may live on CPU
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
                 placement: torch.Tensor | None = None, token_gpu: torch.Tensor | None = None,
                 modality: torch.Tensor | None = None,
                 entropy: torch.Tensor | None = None, topk_ids: torch.Tensor | None = None,
                 topk_weights: torch.Tensor | None = None,
                 expert_labels: torch.Tensor | None = None,
                 num_experts: int | None = None,
                 local_experts: torch.Tensor | None = None) -> DispatchPlan:
        scores_known = scores is not None
        if scores is None:
            scores = self._scores_from_ids(topk_ids, num_experts)
        fn = _POLICIES[self.name][0]
        kw: dict[str, Any] = dict(top_k=top_k, modality=modality, entropy=entropy,
                                  topk_ids=topk_ids, topk_weights=topk_weights,
                                  scores_known=scores_known)
        if self.name != "vanilla":
            kw["token_gpu"] = token_gpu
            kw["placement"] = placement
        if self.name in ("expanded-drop", "macs"):
            if placement is None:
                raise PolicyError(f'{self.name}: needs "placement" ([E] expert -> GPU) to '
                                  "reroute on the same GPU")
            kw["placement"] = placement
            kw["local_experts"] = local_experts
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

    Raises PolicyError for an unknown name (listing the known ones), a parameter the
    policy does not take (listing the ones it does) or a value it does not accept (a
    number that is not finite or out of range, a string not among the choices).
    """
    checked = check_policy_params(name, params)
    if name == "macs":
        MacsParams(**checked)  # its own checks too, now rather than on the first call
    return Policy(name=name, params=checked)
