"""What a sweep runs: the product of its axes, point identities, and bad specs refused
with the file, the field and what was expected."""

from __future__ import annotations

import itertools

import pytest

from macssim.sweep import AXES, SweepError, load_sweep, make_sweep
from macssim.sweep import _spec as spec_module


def test_points_are_the_cartesian_product_last_axis_fastest():
    spec = make_sweep({"topology": ["8xH100", "16xH100"], "capacity_factor": [0.5, 1, 2],
                       "precision": ["bf16", "fp8"]})
    points = spec.points()
    expected = list(itertools.product(["8xH100", "16xH100"], [0.5, 1.0, 2.0],
                                      ["bf16", "fp8"]))
    assert [(p.axes["topology"], p.axes["capacity_factor"], p.axes["precision"])
            for p in points] == expected
    assert [p.index for p in points] == list(range(12))
    assert all(p.axes["trace"] == "default" and p.axes["alltoall"] == "topology"
               for p in points)
    assert len({p.point_id for p in points}) == 12


def test_point_identity_is_stable_and_includes_settings_and_version(monkeypatch):
    a = make_sweep({"capacity_factor": [1.0]}).points()[0]
    b = make_sweep({"capacity_factor": [1]}).points()[0]  # 1 and 1.0 are one value
    assert a.point_id == b.point_id
    assert make_sweep({"capacity_factor": [1.0]}, {"steps": 3}).points()[0].point_id \
        != a.point_id
    before = a.point_id
    monkeypatch.setattr(spec_module, "__version__", "9.9.9")
    assert a.point_id != before  # the same axes under another version: another point


def test_every_axis_has_a_flag_a_yaml_key_and_a_default_or_is_optional():
    """Every axis has a default, but the scenario source and the arrival rates, which
    are in the product only when given."""
    assert len({a.name for a in AXES}) == len(AXES)
    for a in AXES:
        assert a.flag.startswith("--") and a.key
        assert a.default or a.name in ("scenario", "arrival_rate")


@pytest.mark.parametrize("values, message", [
    ({"capacity_factor": []}, r'"capacity_factors" is empty: the sweep would have no points'),
    ({"topology": ["9xH100"]}, r'"topologies\[0\]": unknown topology .9xH100.; known presets'),
    ({"precision": ["bf16", "fp4"]}, r'"precisions\[1\]": unknown precision .fp4.'),
    ({"alltoall": ["nvshmem"]}, r'"alltoall\[0\]": unknown engine .nvshmem.'),
    ({"capacity_factor": [0]}, r'"capacity_factors\[0\]" must be a finite number > 0'),
    ({"capacity_factor": [1.0, 1.0]}, r'"capacity_factors" repeats 1.0'),
    ({"scenario": ["ocr"]}, r'"scenarios\[0\]": unknown scenario .ocr.'),
    ({"trace": ["x.mtrace"], "scenario": ["chat"]}, "traces or scenarios, not both"),
    ({"gpus": [8]}, "unknown axis 'gpus'"),
    ({"trace": ["/nonexistent.mtrace"]}, r'"traces\[0\]": .*nonexistent'),
])
def test_bad_axis_values_are_refused_naming_the_field(values, message):
    with pytest.raises(SweepError, match=message):
        make_sweep(values, where="s.yaml")


def test_bad_settings_are_refused():
    with pytest.raises(SweepError, match=r'"policies\[1\]": unknown policy .nope.'):
        make_sweep({}, {"policies": ["macs", "nope"]})
    with pytest.raises(SweepError, match='"steps" must be an integer >= 1'):
        make_sweep({}, {"steps": 0})
    with pytest.raises(SweepError, match='"model": unknown model preset'):
        make_sweep({}, {"model": "gpt-5"})


def test_yaml_sweep_paths_are_relative_to_the_file_and_errors_name_it(tmp_path, small_trace):
    (tmp_path / "t.mtrace").write_bytes(small_trace.read_bytes())
    f = tmp_path / "sweep.yaml"
    f.write_text("traces: [t.mtrace]\ntopologies: [8xh100, 16xH100]\n"
                 "capacity_factors: [1, 1.25]\npolicies: [macs]\nsteps: 2\n")
    spec = load_sweep(f)
    assert spec.values["trace"] == (str(tmp_path / "t.mtrace"),)
    assert spec.values["topology"] == ("8xH100", "16xH100")
    assert spec.settings["policies"] == ("macs",) and spec.settings["steps"] == 2
    assert spec.num_points() == 4
    # flags override the file's axes
    assert load_sweep(f, {"capacity_factor": [2.0]}).num_points() == 2
    f.write_text("topologies: [8xH100]\ncapacity_factor: [1.0]\n")
    with pytest.raises(SweepError, match=rf"{f}: unknown field 'capacity_factor'; known: "):
        load_sweep(f)
    f.write_text("topologies: []\n")
    with pytest.raises(SweepError, match=rf'{f}: "topologies" is empty'):
        load_sweep(f)
    f.write_text("topologies: 8xH100\n")
    with pytest.raises(SweepError, match='"topologies" must be a list of values'):
        load_sweep(f)
    f.write_text("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefg", "bcdefgh", strict=True)))
    with pytest.raises(SweepError, match="alias bomb"):
        load_sweep(f)


def test_redundant_experts_pair_only_with_eplb():
    """contiguous × N > 0 is no configuration: left out, and counted out."""
    spec = make_sweep({"placement": ["contiguous", "eplb"], "redundant_experts": [0, 8, 16],
                       "capacity_factor": [1.0, 1.25]})
    points = spec.points()
    combos = {(p.axes["placement"], p.axes["redundant_experts"]) for p in points}
    assert combos == {("contiguous", 0), ("eplb", 0), ("eplb", 8), ("eplb", 16)}
    assert spec.num_points() == len(points) == 8
    assert [p.index for p in points] == list(range(8))
    with pytest.raises(SweepError, match="unknown placement 'ring'"):
        make_sweep({"placement": ["ring"]})
    with pytest.raises(SweepError, match="redundant_experts"):
        make_sweep({"redundant_experts": [-1]})
