"""The per-policy summary: the numbers the terminal table, ``summary.csv`` and the plots
share. Column names follow ``macssim/cluster/metrics.py``; a ``_vs_token_drop`` column is
the policy's figure over token-drop's."""

from __future__ import annotations

import numpy as np
import pandas as pd

from macssim.replay import BASELINE_POLICY as BASELINE

__all__ = ["SUMMARY_COLUMNS", "summarize"]


# column -> (how it is computed, short label for the terminal)
SUMMARY_COLUMNS: dict[str, str] = {
    "moe_latency_mean_s": "mean of moe_latency_s over steps × MoE layers",
    "moe_latency_p99_s": "99th percentile of moe_latency_s over steps × MoE layers",
    "straggler_delay_mean_s": "mean of straggler_delay_s over steps × MoE layers",
    "straggler_share": "sum of straggler_delay_s / sum of moe_latency_s",
    "imbalance_mean": "mean of imbalance (max/mean GPU expert work) over steps × layers",
    "imbalance_max": "max of imbalance over steps × layers",
    "step_latency_mean_s": "mean of step_latency_s over steps",
    "tokens_per_s": "sum of tokens / sum of step_latency_s",
    "moe_share": "sum of moe_latency_s / sum of step_latency_s",
    "dropped_assignments_frac": "dropped token-expert assignments / all assignments",
    "dropped_gate_mass_frac": "gate weight of dropped assignments / all gate weight",
    "dropped_semantic_mass_frac": "w-weighted dropped assignments / all, w = the yardstick "
                                  "semantic weight (δ = YARDSTICK_DELTA for every policy)",
    "tokens_lost_all_frac": "tokens left with no expert / tokens, over steps × MoE layers "
                            "(the mean fraction per layer)",
}
"""A drop figure the trace cannot support (gate mass without router weights or scores,
semantic mass without entropy: id-only imports) is NaN, shown as n/a."""


def summarize(layers: pd.DataFrame, steps: pd.DataFrame, drops: pd.DataFrame,
              policies: tuple[str, ...]) -> pd.DataFrame:
    """Rows per policy (in ``policies`` order) and step kind: ``all``, then ``prefill``
    and ``decode`` when the trace has both (their MoE layers differ by orders of
    magnitude, so a mean over both hides each). Drop fractions also per modality; ratios
    to token-drop compare rows of the same kind."""
    kinds = ["all"]
    present = [k for k in ("prefill", "decode") if k in set(steps.kind)]
    if len(present) > 1:
        kinds += present
    rows = []
    for policy in policies:
        for kind in kinds:
            rows.append(_row(policy, kind, *(_pick(df, policy, kind)
                                             for df in (layers, steps, drops))))
    table = pd.DataFrame(rows)
    if BASELINE in set(table.policy):
        for col in SUMMARY_COLUMNS:
            base = table[table.policy == BASELINE].set_index("kind")[col]
            ratio = table[col] / table.kind.map(base)
            table[f"{col}_vs_token_drop"] = ratio.where(table.kind.map(base) != 0)
    return table


def _pick(df: pd.DataFrame, policy: str, kind: str) -> pd.DataFrame:
    mask = df.policy == policy
    return df[mask if kind == "all" else mask & (df.kind == kind)]


def _row(policy: str, kind: str, lay: pd.DataFrame, stp: pd.DataFrame,
         drp: pd.DataFrame) -> dict:
    moe = lay.moe_latency_s.to_numpy()
    row = {
        "policy": policy,
        "kind": kind,
        "steps": int(stp.step.nunique()),
        "moe_latency_mean_s": float(moe.mean()),
        "moe_latency_p99_s": float(np.percentile(moe, 99)),
        "straggler_delay_mean_s": float(lay.straggler_delay_s.mean()),
        "straggler_share": float(lay.straggler_delay_s.sum() / moe.sum()) if moe.sum() else 0.0,
        "imbalance_mean": float(lay.imbalance.mean()),
        "imbalance_max": float(lay.imbalance.max()),
        "step_latency_mean_s": float(stp.step_latency_s.mean()),
        "tokens_per_s": float(stp.tokens.sum() / stp.step_latency_s.sum()),
        "moe_share": float(moe.sum() / stp.step_latency_s.sum()),
    }
    # min_count=1: a mass the trace cannot support (NaN in every row) stays NaN.
    by_modality = drp.groupby("modality").sum(numeric_only=True, min_count=1)
    totals = by_modality.sum(min_count=1)
    for name in ("assignments", "gate_mass", "semantic_mass"):
        row[f"dropped_{name}_frac"] = _frac(totals[f"dropped_{name}"], totals[name])
        for modality, r in by_modality.iterrows():
            row[f"dropped_{name}_frac_{modality}"] = _frac(r[f"dropped_{name}"], r[name])
    row["tokens_lost_all"] = int(totals["tokens_lost_all"])
    row["tokens_lost_all_frac"] = _frac(totals["tokens_lost_all"], totals["tokens"])
    return row


def _frac(num: float, den: float) -> float:
    if num != num or den != den:
        return float("nan")  # not measurable on this trace
    return float(num / den) if den else 0.0
