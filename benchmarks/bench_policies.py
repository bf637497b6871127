"""Plan time of each policy for one MoE layer's batch: T = 16384 tokens, E = 128 experts,
k = 8, 8 GPUs (the Qwen3-VL-30B-A3B shape at EP8). Run on demand:

    python benchmarks/bench_policies.py [--device cpu|cuda] [--tokens 16384] [--repeats 10]
        [--scope rank|global]

Scores come from the calibrated synthetic generator (a prefill of the ``mixed`` scenario by
default, cut to T tokens); token t is dispatched from GPU t·G // T (DP attention: each GPU
holds a contiguous share of the batch). Ratios to token-drop are measured in the same run
(the machines are shared and noisy; absolute times are indicative); the policies are
timed interleaved, one call of each per round, so that load drifts hit all alike."""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from macssim.policies import get_policy


def synthetic_layer(num_tokens: int, scenario: str, seed: int, layer: int):
    """One MoE layer of a synthetic prefill of the Qwen3-VL-30B-A3B preset (the calibrated
    routing model of docs/synthetic.md), cut to ``num_tokens`` tokens."""
    import dataclasses

    from macssim.trace import get_model_preset, get_scenario, synthetic_steps

    preset = get_model_preset("qwen3-vl-30b-a3b")
    model = dataclasses.replace(preset, moe_layers=(layer,))  # one layer is enough
    sc = get_scenario(scenario)
    batch_size = max(1, int(2 * num_tokens / sc.mean_prompt_tokens()) + 1)
    step = next(synthetic_steps(model, sc.with_overrides(batch_size=batch_size), 1, seed))
    if step.num_tokens < num_tokens:
        raise SystemExit(f"prefill has {step.num_tokens} tokens < {num_tokens}")
    take = slice(0, num_tokens)
    return (torch.from_numpy(step.scores[0, take].astype(np.float32)),
            torch.from_numpy(step.topk_ids[0, take]), torch.from_numpy(step.modality[take]),
            torch.from_numpy(step.entropy[0, take]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--scenario", default="mixed")
    ap.add_argument("--capacity-factor", type=float, default=1.0)
    ap.add_argument("--scope", default="rank", choices=("rank", "global"))
    ap.add_argument("--compute-topk", action="store_true",
                    help="let each policy compute top-k from the scores instead of taking the "
                    "router's ids from the trace")
    args = ap.parse_args()
    dev = torch.device(args.device)
    scores, topk_ids, modality, entropy = (x.to(dev) for x in synthetic_layer(
        args.tokens, args.scenario, 0, layer=0))
    num_experts = scores.shape[1]
    placement = (torch.arange(num_experts) * args.gpus // num_experts).to(dev)
    labels = torch.from_numpy(np.random.default_rng(0).integers(-1, 2, num_experts)).to(dev)
    token_gpu = (torch.arange(args.tokens) * args.gpus // args.tokens).to(dev)
    kw = dict(top_k=args.top_k, modality=modality, entropy=entropy, placement=placement,
              token_gpu=token_gpu, expert_labels=labels,
              topk_ids=None if args.compute_topk else topk_ids)
    print(f"T={args.tokens} E={num_experts} k={args.top_k} G={args.gpus} device={dev} "
          f"threads={torch.get_num_threads()}")
    print(f"scenario {args.scenario}: {(modality > 0).float().mean():.0%} visual tokens, "
          f"γ={args.capacity_factor}, scope {args.scope}")
    names = ("vanilla", "token-drop", "expanded-drop", "macs")
    policies = {name: get_policy(name, **({} if name == "vanilla" else
                                          {"capacity_factor": args.capacity_factor,
                                           "scope": args.scope}))
                for name in names}
    plans = {name: p(scores, **kw) for name, p in policies.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name, policy in policies.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            policy(scores, **kw)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    results = {name: statistics.median(t) for name, t in times.items()}
    for name, plan in plans.items():
        added = plan.drops.total("rerouted_assignments") / plan.drops.total("assignments")
        print(f"{name:14s} median {results[name] * 1e3:8.2f} ms   "
              f"dropped {plan.drops.frac('assignments'):6.2%}  "
              f"added local {added:6.2%}"
              f"  no expert left {plan.drops.total('tokens_lost_all') / args.tokens:6.2%}")
    base = results["token-drop"]
    print("ratio of medians to token-drop: "
          + ", ".join(f"{n} {t / base:.2f}x" for n, t in results.items()))
    # Each round times every policy back to back: the median of per-round ratios is the
    # figure least moved by other load on a shared machine.
    print("median per-round ratio to token-drop: " + ", ".join(
        f"{n} {statistics.median(a / b for a, b in zip(t, times['token-drop'], strict=True)):.2f}x"
        for n, t in times.items()))


if __name__ == "__main__":
    main()
