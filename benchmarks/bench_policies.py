"""Plan time of each policy for one MoE layer's batch: T = 16384 tokens, E = 128 experts,
k = 8, 8 GPUs (the Qwen3-VL-30B-A3B shape at EP8). Run on demand:

    python benchmarks/bench_policies.py [--device cpu|cuda] [--tokens 16384] [--repeats 10]

Scores come from the synthetic generator's first prefill step of the ``docvqa`` scenario
when it holds enough tokens, padded by repetition to T; ratios to token-drop are measured
in the same run (the machines are shared and noisy; absolute times are indicative)."""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from macssim.policies import get_policy


def batch(num_tokens: int, num_experts: int, seed: int, skew_sigma: float, visual_frac: float):
    """Router scores with log-normal expert popularity (per-layer skew) and per-token
    noise; ~visual_frac image tokens with entropies in nats."""
    g = torch.Generator().manual_seed(seed)
    popularity = torch.randn(num_experts, generator=g) * skew_sigma
    logits = popularity + torch.randn(num_tokens, num_experts, generator=g) * 1.2
    scores = torch.softmax(logits, dim=1)
    modality = (torch.rand(num_tokens, generator=g) < visual_frac).to(torch.uint8)
    entropy = 5.5 + torch.randn(num_tokens, generator=g) * 0.6
    return scores, modality, entropy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--skew-sigma", type=float, default=0.6,
                    help="log-normal sigma of expert popularity (0.6 gives ~20%% overflow at γ=1)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    scores, modality, entropy = (x.to(dev) for x in batch(
        args.tokens, args.experts, 0, args.skew_sigma, visual_frac=0.8))
    placement = (torch.arange(args.experts) * args.gpus // args.experts).to(dev)
    labels = torch.from_numpy(np.random.default_rng(0).integers(-1, 2, args.experts)).to(dev)
    kw = dict(top_k=args.top_k, modality=modality, entropy=entropy, placement=placement,
              expert_labels=labels)
    print(f"T={args.tokens} E={args.experts} k={args.top_k} G={args.gpus} device={dev} "
          f"threads={torch.get_num_threads()}")
    results = {}
    for name in ("vanilla", "token-drop", "expanded-drop", "macs"):
        policy = get_policy(name)
        plan = policy(scores, **kw)  # warm-up
        times = []
        for _ in range(args.repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            policy(scores, **kw)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        results[name] = statistics.median(times)
        print(f"{name:14s} median {results[name] * 1e3:8.2f} ms   "
              f"dropped {plan.drops.frac('assignments'):6.2%}  "
              f"rerouted {plan.drops.total('rerouted_assignments') / plan.kept.numel():6.2%}")
    base = results["token-drop"]
    print("ratio to token-drop: " + ", ".join(f"{n} {t / base:.2f}x" for n, t in results.items()))


if __name__ == "__main__":
    main()
