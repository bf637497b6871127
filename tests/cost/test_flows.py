"""The flow network against closed forms: one flow, equal flows on a bottleneck, a
textbook two-bottleneck max-min example, a survivor speeding up, late arrivals, and
max-min fairness itself checked by its defining property on random instances."""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from macssim.cost import FlowNetwork, max_min_rates
from macssim.cost._flows import _max_min_by_levels, _max_min_by_links

REL = 1e-12


def run_flows(capacity, flows, *, end_rtol=0.0):
    """flows: (start_s, links, nbytes, latency_s) tuples -> delivery time of each."""
    env = simpy.Environment()
    net = FlowNetwork(env, capacity, end_rtol=end_rtol)
    delivered: dict[int, float] = {}

    def one(i, start_s, links, nbytes, latency_s):
        yield env.timeout(start_s)
        delivered[i] = yield net.transfer(links, nbytes, latency_s)

    for i, flow in enumerate(flows):
        env.process(one(i, *flow))
    env.run()
    return [delivered[i] for i in range(len(flows))], net


def test_lone_flow_takes_latency_plus_size_over_bandwidth():
    (t,), _ = run_flows([50e9], [(0.0, [0], 3e6, 7e-6)])
    assert t == pytest.approx(7e-6 + 3e6 / 50e9, rel=REL)


def test_lone_flow_is_limited_by_its_narrowest_link():
    (t,), _ = run_flows([400e9, 25e9, 100e9], [(0.0, [0, 1, 2], 1e6, 3e-6)])
    assert t == pytest.approx(3e-6 + 1e6 / 25e9, rel=REL)


@pytest.mark.parametrize("n", [2, 3, 7, 56])
def test_n_equal_flows_through_one_bottleneck(n):
    size, bw, lat = 2e6, 40e9, 4e-6
    times, _ = run_flows([bw, 1e15], [(0.0, [0, 1], size, lat)] * n)
    assert times == pytest.approx([lat + n * size / bw] * n, rel=REL)


def test_two_bottleneck_max_min_rates_and_completions():
    # The classic pattern of Bertsekas & Gallager (Data Networks, sec. 6.5.2): flow A
    # crosses both links, B only link 1 (capacity 10), C only link 2 (capacity 4).
    # Link 2 fills first at 4/2 = 2 each (A, C); B takes what A leaves on link 1: 8.
    links = np.array([[0, 1], [0, 2], [1, 2]])  # pad = 2 (no link)
    rates = max_min_rates(links, np.array([10.0, 4.0]))
    assert rates.tolist() == pytest.approx([2.0, 8.0, 2.0], rel=REL)
    # Sizes A=4, B=16, C=2 bytes. C ends at 1 s; then A's bottleneck is link 1 shared with
    # B (5 each) but link 2 alone allows 4, so A = 4, B = 6; A has 2 left -> ends at 1.5 s;
    # B has 16 - 8 - 3 = 5 left, alone at 10 -> ends at 2.0 s.
    times, _ = run_flows([10.0, 4.0], [(0.0, [0, 1], 4.0, 0.0), (0.0, [0], 16.0, 0.0),
                                       (0.0, [1], 2.0, 0.0)])
    assert times == pytest.approx([1.5, 2.0, 1.0], rel=REL)


def test_survivor_speeds_up_when_a_flow_ends():
    size, bw = 1e6, 10e9
    times, net = run_flows([bw], [(0.0, [0], size, 0.0), (0.0, [0], 2 * size, 0.0)])
    # Both at bw/2 until the small one ends at 2·size/bw; the other then runs alone.
    assert times == pytest.approx([2 * size / bw, 3 * size / bw], rel=REL)
    assert net.recomputations == 2


def test_a_late_flow_takes_its_share_from_then_on():
    bw, size = 8e9, 8e6  # alone, the first flow would need 1 ms
    times, _ = run_flows([bw], [(0.0, [0], size, 0.0), (0.5e-3, [0], size / 4, 0.0)])
    # At 0.5 ms half of flow 0 is left; both then run at bw/2: flow 1 (2 MB) ends after
    # 0.5 ms (at 1.0 ms), flow 0 has 4 - 2 = 2 MB left, alone: +0.25 ms.
    assert times == pytest.approx([1.25e-3, 1.0e-3], rel=REL)


def test_zero_byte_flow_only_pays_latency():
    (t,), _ = run_flows([1e9], [(1e-3, [0], 0.0, 5e-6)])
    assert t == pytest.approx(1e-3 + 5e-6, rel=REL)


def _random_instance(rng, num_flows, num_links, width):
    """Random paths of 1..width distinct links, padded with num_links."""
    links = np.full((num_flows, width), num_links)
    for row in links:
        size = int(rng.integers(1, min(width, num_links) + 1))
        chosen = rng.choice(num_links, size=size, replace=False)
        row[:chosen.size] = chosen
    capacity = rng.uniform(1.0, 10.0, size=num_links)
    return links, capacity


@pytest.mark.parametrize("seed", range(20))
def test_rates_are_max_min_fair(seed):
    """Max-min fairness, by its definition: feasible, and every flow crosses a saturated
    link on which no flow has a higher rate (its bottleneck)."""
    rng = np.random.default_rng(seed)
    num_links = int(rng.integers(2, 12))
    links, capacity = _random_instance(rng, int(rng.integers(1, 60)), num_links, 3)
    for solve in (_max_min_by_links, _max_min_by_levels, max_min_rates):
        rates = solve(links, capacity)
        load = np.zeros(num_links + 1)
        for row, r in zip(links, rates, strict=True):
            for link in set(row.tolist()):
                load[link] += r
        assert (load[:num_links] <= capacity * (1 + 1e-9)).all()
        for row, r in zip(links, rates, strict=True):
            ok = False
            for link in set(row.tolist()) - {num_links}:
                users = [rates[i] for i, other in enumerate(links) if link in other]
                if load[link] >= capacity[link] * (1 - 1e-9) and r >= max(users) * (1 - 1e-9):
                    ok = True
            assert ok, f"flow with rate {r} has no bottleneck link"


def test_flow_crossing_no_link_is_unbounded():
    assert np.isinf(max_min_rates(np.array([[3, 3]]), np.ones(3))).all()


def test_coalescing_ends_stays_within_its_tolerance_and_saves_work():
    rng = np.random.default_rng(7)
    flows = [(float(rng.uniform(0, 1e-4)), [int(rng.integers(0, 4)), 4 + int(rng.integers(0, 4))],
              float(rng.uniform(1e5, 1e6)), 1e-6) for _ in range(200)]
    exact, net_exact = run_flows([10e9] * 8, flows)
    approx, net_approx = run_flows([10e9] * 8, flows, end_rtol=0.02)
    assert net_approx.recomputations < net_exact.recomputations
    assert np.allclose(approx, exact, rtol=0.05)
    assert max(approx) == pytest.approx(max(exact), rel=0.02)


def test_bad_arguments_are_rejected(env):
    with pytest.raises(ValueError, match="capacity_bytes_per_s"):
        FlowNetwork(env, [1.0, 0.0])
    net = FlowNetwork(env, [1.0])
    with pytest.raises(ValueError, match="links"):
        net.start(np.array([[5]]), np.array([1.0]), np.array([0.0]), lambda i, t: None)


def reference_fluid(capacity, flows):
    """Slow twin: a plain event loop that recomputes every rate from scratch at every
    start and end (no shared timer, no incremental recomputation)."""
    capacity = np.asarray(capacity, dtype=float)
    pad = capacity.size
    width = max(len(f[1]) for f in flows)
    links = np.full((len(flows), width), pad)
    for i, f in enumerate(flows):
        links[i, :len(f[1])] = f[1]
    start = np.array([f[0] for f in flows])
    left = np.array([f[2] for f in flows], dtype=float)
    end = np.full(len(flows), np.nan)
    now = 0.0
    while np.isnan(end).any():
        active = np.flatnonzero((start <= now) & np.isnan(end))
        upcoming = start[start > now]
        next_start = upcoming.min() if upcoming.size else np.inf
        if not active.size:
            now = next_start
            continue
        rate = max_min_rates(links[active], capacity)
        to_end = left[active] / rate
        step = min(to_end.min(), next_start - now)
        left[active] -= rate * step
        now += step
        finished = active[to_end <= step * (1 + 1e-12)]
        end[finished] = now
        left[finished] = 0.0
    return (end + np.array([f[3] for f in flows])).tolist()


@pytest.mark.parametrize("seed", range(8))
def test_network_matches_a_from_scratch_fluid_simulation(seed):
    rng = np.random.default_rng(seed)
    num_links = 6
    flows = []
    for _ in range(int(rng.integers(2, 40))):
        path = rng.choice(num_links, size=int(rng.integers(1, 4)), replace=False).tolist()
        flows.append((float(rng.choice([0.0, 1e-4, 2e-4, rng.uniform(0, 3e-4)])), path,
                      float(rng.uniform(1e3, 1e6)), float(rng.uniform(0, 1e-5))))
    capacity = rng.uniform(1e9, 1e10, num_links)
    times, _ = run_flows(capacity, flows)
    assert times == pytest.approx(reference_fluid(capacity, flows), rel=1e-9)
