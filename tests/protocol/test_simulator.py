"""The Kademlia simulator (bench/simulate.py): its figures and small runs.

Its exact answer, ``xor.closest_in_sorted``, is tested in test_xor.py."""

from __future__ import annotations

from bench.simulate import PhaseStats, SimConfig, Simulation, is_exact, percentile, run
from protocol.xor import closest


def test_is_exact_and_percentile() -> None:
    ids = [bytes([n]) * 32 for n in range(6)]
    ints = [int.from_bytes(p, "big") for p in ids]
    assert is_exact(ids, ints, 5)
    assert not is_exact([ids[1], ids[0], *ids[2:]], ints, 5)
    assert not is_exact(ids[:4], ints, 5)  # too short a result is not exact
    assert is_exact(ids[:2], [*ints[:2], 7], 2)
    assert percentile([3, 1, 2], 0.5) == 2
    assert percentile(list(range(1, 101)), 0.95) == 95
    assert percentile([5], 0.95) == 5


def test_small_run_reports_exactness_that_matches_brute_force() -> None:
    config = SimConfig(nodes=100, build="join", seed=3)
    sim = Simulation(config)
    sim.build_by_joining(config.nodes, progress=False)
    assert all(node.joined for node in sim.nodes.values())
    sizes = [len(node.table) for node in sim.nodes.values()]
    assert min(sizes) >= 20  # every node found at least a bucket's worth of peers

    phase = PhaseStats("static")
    sim.measure(phase, 40, churn=False)
    assert len(phase.records) == 40
    everyone = list(sim.nodes)
    for record in phase.records:
        others = [p for p in everyone if p != record.origin]
        assert record.exact5 == (list(record.result[:5]) == closest(record.target, others, 5))
        assert record.exact_k == (list(record.result) == closest(record.target, others, 20))
        assert record.rounds >= 1
        assert record.messages >= len(record.result)
        assert record.latency > 0
    summary = phase.summary()
    assert summary["exact5_share"] >= 0.95
    assert 1 <= summary["rounds_median"] <= 3


def test_churn_phase_and_a_config_that_cannot_be_exact() -> None:
    report = run(
        SimConfig(nodes=80, lookups=20, churn_lookups=20, churn=0.1, churn_duration=4.0, seed=5)
    )
    static, churn = report.static, report.churn
    assert report.build == "join"
    assert report.table_sizes[1] >= 20
    assert len(static.records) == 20
    assert churn.left == churn.joined == 8
    assert len(churn.records) + churn.abandoned == 20
    # k = 2: a lookup returns 2 peers, so its 5 closest can never be exact.
    crippled = run(
        SimConfig(nodes=60, lookups=20, churn_lookups=0, k=2, build="converged", seed=5)
    ).static
    assert len(crippled.records) == 20
    assert crippled.summary()["exact5_share"] == 0.0
