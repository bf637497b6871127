"""Overhead of routing capture: forward time with the hooks / without, in one run.

Target (issue 4): ratio <= 1.05 on a tiny model on CPU; on a GPU, measure at real scale
(``--real-scale``: a full-width Qwen3-VL-30B-A3B text tower with random weights, bf16,
fewer layers if memory demands). The hooked time includes everything capture does per
forward call: the router hooks (feature entropy on the device), the step assembly and the
one copy of the step to the CPU; only writing to disk is left out (``on_step`` drops it).

    python benchmarks/bench_capture.py                      # tiny model, CPU
    python benchmarks/bench_capture.py --real-scale --device cuda --layers 8

Prints one table; numbers go to docs/capture.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from macssim.capture import TinyRequest, build_tiny_model, record_routing, tiny_batch

SEED = 0


def _real_scale_model(layers: int, device: str):
    """Qwen3-VL-30B-A3B's text tower at full width (hidden 2048, 128 experts, top-8,
    expert intermediate 768, 32 heads / 4 KV heads of 128), ``layers`` decoder layers,
    random weights, bf16, grouped-GEMM experts (the default a real run uses)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                            moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8,
                            num_hidden_layers=layers, num_attention_heads=32,
                            num_key_value_heads=4, head_dim=128, norm_topk_prob=True)
    torch.manual_seed(SEED)
    with torch.device(device):
        model = Qwen3MoeForCausalLM(config).to(torch.bfloat16).eval()
    return model


def _inputs(model, family: str, batch: int, seq: int, device: str):
    if family == "real-scale":
        gen = torch.Generator().manual_seed(SEED)
        ids = torch.randint(16, model.config.vocab_size, (batch, seq), generator=gen)
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    vision = family in ("qwen3-vl-moe", "qwen3.5-moe", "glm4v-moe", "ernie4.5-vl")
    requests = [TinyRequest(seq // 2, 1 if vision else 0, seq // 2 - 6) for _ in range(batch)]
    inputs = tiny_batch(family, model.config, requests, seed=SEED)
    return {k: v.to(device) for k, v in inputs.items()}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_once(model, inputs, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        model(**inputs)
    _sync(device)
    return time.perf_counter() - start


def measure(model, inputs, device: str, repeats: int) -> tuple[list[float], list[float]]:
    """Forward seconds (plain, hooked) of each run, interleaved so drift hits both."""
    for _ in range(3):
        _time_once(model, inputs, device)
    plain, hooked = [], []
    with record_routing(model, on_step=lambda step: None) as recorder:
        for _ in range(repeats):
            recorder.detach()
            plain.append(_time_once(model, inputs, device))
            recorder.attach()
            hooked.append(_time_once(model, inputs, device))
    return plain, hooked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="qwen3-vl-moe",
                        help="tiny family (default %(default)s)")
    parser.add_argument("--real-scale", action="store_true",
                        help="full-width Qwen3-VL-30B-A3B text tower instead of a tiny model")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers at real scale")
    parser.add_argument("--batch", type=int, default=4, help="requests per batch")
    parser.add_argument("--seq", type=int, default=256, help="tokens per request")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs of each")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.real_scale:
        family = "real-scale"
        model = _real_scale_model(args.layers, args.device)
    else:
        family = args.family
        model = build_tiny_model(family, seed=SEED).to(args.device)
    inputs = _inputs(model, family, args.batch, args.seq, args.device)
    tokens = int(inputs["attention_mask"].sum())
    plain, hooked = measure(model, inputs, args.device, args.repeats)
    plain_s, hooked_s = statistics.median(plain), statistics.median(hooked)
    name = "qwen3-vl-30b-a3b text tower" if args.real_scale else f"tiny {family}"
    print(f"{'model':<28} {'device':<8} {'threads':>7} {'tokens':>7} {'plain_ms':>9} "
          f"{'capture_ms':>11} {'ratio':>6} {'ratio_min':>9}")
    print(f"{name:<28} {args.device:<8} {torch.get_num_threads():>7} {tokens:>7} "
          f"{plain_s * 1e3:>9.2f} {hooked_s * 1e3:>11.2f} {hooked_s / plain_s:>6.3f} "
          f"{min(hooked) / min(plain):>9.3f}")
    print("ratio: median capture / median plain; ratio_min: fastest capture / fastest plain "
          "(robust to other load on the machine)")


if __name__ == "__main__":
    main()
