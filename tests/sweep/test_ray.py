"""The Ray path on a local Ray instance: the same table as local processes."""

from __future__ import annotations

import pytest

ray = pytest.importorskip(
    "ray", reason="Ray is not installed (an optional extra: pip install -e '.[ray]')")


def test_a_sweep_on_local_ray_gives_the_same_table(reference_table, tmp_path):
    from macssim.sweep import run_sweep

    spec, _, expected = reference_table
    out = tmp_path / "ray.parquet"
    outcome = run_sweep(spec, out, ray="local", jobs=2)
    assert (outcome.ran, outcome.failed) == (len(spec.points()), 0)
    assert out.read_bytes() == expected
    assert not ray.is_initialized()  # the instance it started is shut down
