"""The three plots a planner looks at first: where the load sits (GPU × layer heatmap per
policy), where the straggler bites (delay per layer), and the latency distribution (CDF of
MoE-layer latency across policies). Axis labels carry units; names follow metrics.py."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["plot_load_heatmap", "plot_straggler_per_layer", "plot_latency_cdf"]


def plot_load_heatmap(gpu_load: dict[str, np.ndarray], path: Path) -> Path:
    """gpu_load: policy -> [L, G] kept assignments; shown relative to each layer's mean
    GPU, so 1.0 is balanced and the hottest cell is the layer's imbalance."""
    names = list(gpu_load)
    rel = {n: _relative(gpu_load[n]) for n in names}
    vmax = max(float(r.max()) for r in rel.values())
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 1, 5), sharey=True,
                             squeeze=False, layout="constrained")
    for ax, name in zip(axes[0], names, strict=True):
        im = ax.imshow(rel[name], aspect="auto", cmap="magma", vmin=0, vmax=vmax,
                       interpolation="nearest")
        ax.set_title(name)
        ax.set_xlabel("GPU")
    axes[0][0].set_ylabel("MoE layer")
    fig.colorbar(im, ax=axes[0].tolist(), label="expert_assignments / layer mean over GPUs")
    fig.suptitle("Expert work per GPU and layer (summed over steps)")
    return _save(fig, path)


def _relative(load: np.ndarray) -> np.ndarray:
    mean = load.mean(axis=1, keepdims=True).astype(np.float64)
    return np.divide(load, mean, out=np.zeros(load.shape), where=mean > 0)


def _kinds(layers: pd.DataFrame) -> list[str]:
    """Prefill and decode layers differ by orders of magnitude: one panel each."""
    return [k for k in ("prefill", "decode") if k in set(layers.kind)] or ["all"]


def _panels(kinds: list[str]):
    fig, axes = plt.subplots(1, len(kinds), figsize=(7 * len(kinds), 4.5), squeeze=False,
                             layout="constrained")
    return fig, dict(zip(kinds, axes[0], strict=True))


def _of_kind(layers: pd.DataFrame, policy: str, kind: str) -> pd.DataFrame:
    mask = layers.policy == policy
    return layers[mask if kind == "all" else mask & (layers.kind == kind)]


def plot_straggler_per_layer(layers: pd.DataFrame, policies: tuple[str, ...], path: Path) -> Path:
    kinds = _kinds(layers)
    fig, axes = _panels(kinds)
    for kind, ax in axes.items():
        for name in policies:
            per = _of_kind(layers, name, kind).groupby("layer").straggler_delay_s.mean()
            ax.plot(per.index, per.to_numpy() * 1e6, marker=".", label=name)
        ax.set_xlabel("MoE layer")
        ax.set_ylabel("straggler_delay_s, mean over steps (µs)")
        ax.set_title(f"Straggler delay per layer — {kind} steps")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_latency_cdf(layers: pd.DataFrame, policies: tuple[str, ...], path: Path) -> Path:
    kinds = _kinds(layers)
    fig, axes = _panels(kinds)
    for kind, ax in axes.items():
        for name in policies:
            x = np.sort(_of_kind(layers, name, kind).moe_latency_s.to_numpy()) * 1e6
            ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", label=name)
        ax.set_xlabel("moe_latency_s (µs)")
        ax.set_ylabel("fraction of MoE layers")
        ax.set_title(f"MoE-layer latency CDF — {kind} steps")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    # constrained layout fits the figure in one draw (bbox_inches="tight" draws twice)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
