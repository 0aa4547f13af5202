"""The short CI soak: perf/soak.py for ~10 s after a warm-up (the long run's figures are in
perf/results/soak.md)."""

import pytest

from sampleiqa.perf.soak import MAX_GROWTH_MIB, MAX_LATE_GROWTH_MIB, soak

pytestmark = [pytest.mark.server, pytest.mark.soak]


def test_short_soak_has_no_errors_and_bounded_memory_growth(tmp_path):
    # 20 s of warm-up: RSS climbs for the first few hundred requests (ORT's arena growing to
    # each batch shape it meets), may step once more, then levels off; a leak keeps growing.
    r = soak(
        clients=2,
        seconds=10,
        warmup_s=20,
        images=16,
        log_file=tmp_path / "triton.log",
        sample_every_s=5,
        every_image=True,
    )
    print("\n" + r.report())
    assert r.errors == 0, r.error_examples
    assert r.requests >= 2 * 18 and r.item_errors >= 2 * 2  # each client sent the 16 photos and the 2 bad inputs
    assert r.processes >= 4 and r.rss_start_mib > 100  # Triton and its python stubs were measured
    assert r.growth_mib <= MAX_GROWTH_MIB, r.report()
    assert r.late_growth_mib <= MAX_LATE_GROWTH_MIB, r.report()
