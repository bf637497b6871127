"""Shared fixtures: small traces made with the synthetic generator, so replay and report
tests run in seconds; a small model and small topologies built in code, with round figures
so that expected times can be written as closed forms."""

from __future__ import annotations

import pytest
import simpy

from macssim.hardware import GpuSpec, NicSpec, NvlinkSpec, SwitchSpec, Topology
from macssim.trace import ModelFacts, get_scenario, synthesize

SMALL_MODEL = ModelFacts(
    name="small-moe", num_layers=4, moe_layers=(0, 1, 2, 3), num_experts=32, top_k=4,
    hidden_size=1024, expert_intermediate_size=512, num_attention_heads=8, num_kv_heads=2,
    head_dim=128, vision_flops_per_token=1e9)


@pytest.fixture(scope="session")
def small_trace(tmp_path_factory):
    """An image-heavy trace: 1 prefill of 2 document requests + 3 decode steps, 4 MoE
    layers of 32 experts, top-4."""
    path = tmp_path_factory.mktemp("traces") / "small.mtrace"
    scenario = get_scenario("docvqa").with_overrides(batch_size=2, decode_steps=3)
    synthesize(path, model=SMALL_MODEL, scenario=scenario, num_steps=4, seed=0)
    return path

GPU = GpuSpec(kind="test-gpu", bf16_flops_per_s=100e12, hbm_bytes_per_s=2e12,
              memory_bytes=80e9, compute_efficiency=0.5, memory_efficiency=0.5)
NVLINK = NvlinkSpec(bw_bytes_per_s=100e9, latency_s=2e-6, efficiency=0.8)
NIC = NicSpec(per_node=4, rate_bytes_per_s=25e9, latency_s=5e-6, efficiency=0.8)
SWITCH = SwitchSpec(latency_s=1e-6)


def make_topology(nodes: int = 1, gpus_per_node: int = 4) -> Topology:
    return Topology(name=f"{nodes}x{gpus_per_node}test", gpu=GPU, nodes=nodes,
                    gpus_per_node=gpus_per_node, nvlink=NVLINK,
                    nic=NicSpec(gpus_per_node, NIC.rate_bytes_per_s, NIC.latency_s,
                                NIC.efficiency),
                    switch=SWITCH)


@pytest.fixture
def make_topo():
    """Factory: ``make_topo(nodes, gpus_per_node)``, one NIC per GPU, one switch."""
    return make_topology


@pytest.fixture
def env() -> simpy.Environment:
    return simpy.Environment()


@pytest.fixture
def topo4() -> Topology:
    return make_topology(1, 4)


@pytest.fixture
def tiny_model() -> ModelFacts:
    return ModelFacts(name="tiny", num_layers=2, moe_layers=(0, 1), num_experts=8, top_k=2,
                      hidden_size=1024, expert_intermediate_size=512, num_attention_heads=8,
                      num_kv_heads=2, head_dim=64, vocab_size=1000)
