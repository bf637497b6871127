"""What the bundled trace's quick-start conclusion rests on (run on demand; the tables of
``macssim/data/traces/default.md`` are its output).

1. Seeds: the bundled trace's command (``macssim synth --model qwen3-vl-30b-a3b --scenario
   serving --steps 9 --seed S``) for seeds 0, 1 and 2, each replayed as the quick start
   does (``macs,expanded-drop,token-drop`` on 8xH100, γ = 1): is the conclusion the same?
2. Knobs: seed 0 with the uncalibrated visual knobs switched off one at a time
   (``cluster_coherence``, ``modality_bias``): how much of Token Drop's drop rate comes
   from them rather than from the calibrated popularity.
3. Scores kept: seed 0 written with the top 16 router scores per token-layer (the bundled
   trace), the top 32, the top 64 and every score: how far the truncation moves Expanded
   Drop's and MACS's result (they rank a token's local experts by score, and a local
   expert whose score was not kept is no candidate; docs/trace-format.md).

    python benchmarks/default_trace_study.py            # ~3 minutes on 2 cores
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path

from macssim.replay import ReplayConfig, replay
from macssim.report import summarize
from macssim.trace import knobs_for_model, synthesize

MODEL = "qwen3-vl-30b-a3b"
POLICIES = ("macs", "expanded-drop", "token-drop")
KNOB_VARIANTS = (
    ("bundled (`cluster_coherence` 0.9, `modality_bias` 0.5)", {}),
    ("`cluster_coherence` 0.5", {"cluster_coherence": 0.5}),
    ("`modality_bias` 0", {"modality_bias": 0.0}),
    ("both 0 (visual tokens independent, no preferred experts)",
     {"cluster_coherence": 0.0, "modality_bias": 0.0}),
)


@functools.cache
def prefill_summary(root: Path, seed: int, changes: tuple[tuple[str, float], ...],
                    top_n: int | str) -> dict[str, dict]:
    """The quick start's prefill rows, per policy, on the bundled command's trace (seed
    ``seed``, knobs ``changes`` replaced, ``top_n`` scores kept); "file_mb" the size."""
    path = root / f"seed{seed}-{'-'.join(f'{k}{v:g}' for k, v in changes)}-{top_n}.mtrace"
    knobs = dataclasses.replace(knobs_for_model(MODEL), **dict(changes))
    synthesize(path, model=MODEL, scenario="serving", num_steps=9, seed=seed, knobs=knobs,
               top_n=top_n)
    res = replay(ReplayConfig(trace=path, policies=POLICIES, topology="8xH100"))
    table = summarize(res.layers, res.steps, res.drops, res.policies)
    rows = table[table.kind == "prefill"].set_index("policy")
    out = {p: rows.loc[p].to_dict() for p in POLICIES}
    out["file_mb"] = path.stat().st_size / 1e6
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("| seed | prefill MoE latency, MACS / Token Drop | Expanded Drop / Token Drop | "
              "dropped semantic mass, MACS / Token Drop | Token Drop: dropped assignments, "
              "tokens with no expert |")
        print("|---|---|---|---|---|")
        for seed in (0, 1, 2):
            r = prefill_summary(root, seed, (), "2k")
            td = r["token-drop"]
            label = "0 (bundled)" if seed == 0 else str(seed)
            print(f"| {label} | {r['macs']['moe_latency_mean_s_vs_token_drop']:.3f} | "
                  f"{r['expanded-drop']['moe_latency_mean_s_vs_token_drop']:.3f} | "
                  f"{r['macs']['dropped_semantic_mass_frac_vs_token_drop']:.3f} | "
                  f"{td['dropped_assignments_frac'] * 100:.1f} %, "
                  f"{td['tokens_lost_all_frac'] * 100:.1f} % |", flush=True)
        print()
        print("| knobs | Token Drop: dropped assignments | image / text semantic mass dropped "
              "| MACS / Token Drop: prefill MoE latency, dropped semantic mass |")
        print("|---|---|---|---|")
        for label, changes in KNOB_VARIANTS:
            r = prefill_summary(root, 0, tuple(sorted(changes.items())), "2k")
            td = r["token-drop"]
            print(f"| {label} | {td['dropped_assignments_frac'] * 100:.1f} % | "
                  f"{td['dropped_semantic_mass_frac_image']:.2f} / "
                  f"{td['dropped_semantic_mass_frac_text']:.2f} | "
                  f"{r['macs']['moe_latency_mean_s_vs_token_drop']:.2f}, "
                  f"{r['macs']['dropped_semantic_mass_frac_vs_token_drop']:.2f} |", flush=True)
        print()
        print("| scores kept per token-layer | file | prefill MoE latency, MACS / Token Drop | "
              "Expanded Drop / Token Drop | dropped semantic mass, MACS / Token Drop |")
        print("|---|---|---|---|---|")
        for label, top_n in (("16 (bundled)", "2k"), ("32", 32), ("64", 64), ("all 128", "all")):
            r = prefill_summary(root, 0, (), top_n)
            print(f"| {label} | {r['file_mb']:.1f} MB | "
                  f"{r['macs']['moe_latency_mean_s_vs_token_drop']:.3f} | "
                  f"{r['expanded-drop']['moe_latency_mean_s_vs_token_drop']:.3f} | "
                  f"{r['macs']['dropped_semantic_mass_frac_vs_token_drop']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
