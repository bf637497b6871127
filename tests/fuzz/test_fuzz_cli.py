"""Fuzzing the command-line values of ``macssim replay`` and ``macssim synth``: the values
a fuzz campaign and people found (``--capacity-factor inf``, ``--param macs.rho=abc``,
``--device tpu``, a batch of 10¹²…) and hypothesis-generated floats, integers and strings.
Each ends in exit code 2 (a usage error naming the option) or 1 (one ``Error:`` line
naming what is at fault), never a traceback, within the harness's bounds, and nothing is
written under ``--out``.

A value that is valid must get past its option: those runs point ``--trace`` at a missing
file (replay) or ask for an unknown model (synth), so that they end at once, in exit
code 1, instead of running a replay.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.fuzz._harness import invoke_cli, run_bounded

MAX_CAPACITY_FACTOR = 1e6
MAX_BATCH = 65536
MAX_STEPS = 1 << 20
MAX_SEED = (1 << 63) - 1

FUZZ = settings(derandomize=True, deadline=None, database=None, max_examples=60,
                suppress_health_check=[HealthCheck.too_slow])

# What each policy parameter accepts, as docs/policies.md and `macssim replay --help`
# state it: (low, high, low is open) for numbers, a tuple of strings for choices.
MACS_PARAMS: dict[str, tuple] = {
    "capacity_factor": (0.0, MAX_CAPACITY_FACTOR, True),
    "delta": (0.0, 1e6, False),
    "rho": (0.0, 1e6, False),
    "eps": (1e-12, 1e6, False),
    "min_capacity": (0.0, 1e6, False),
    "capacity_basis": ("tokens", "weight"),
}


@pytest.fixture(scope="module")
def cli_imported() -> None:
    """Import the commands' lazy imports (torch, pandas, plotting) outside the harness."""
    import tqdm  # noqa: F401

    import macssim.cli  # noqa: F401
    import macssim.replay  # noqa: F401
    import macssim.report  # noqa: F401


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-out")


def _run(args: list[str], out: Path, name: str):
    """Invoke; whatever the ending, nothing is left under ``out``."""
    result = invoke_cli(args, name=name)
    assert list(out.iterdir()) == [], f"{name}: wrote {list(out.iterdir())}"
    return result


def _usage_error(result, option: str, name: str) -> None:
    assert result.exit_code == 2, f"{name}: exit {result.exit_code}\n{result.output}"
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and option in errors[0], f"{name}: {result.output}"


def _library_error(result, needle: str, name: str) -> None:
    assert result.exit_code == 1, f"{name}: exit {result.exit_code}\n{result.output}"
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"{name}: {result.output}"
    assert needle in lines[0], f"{name}: {needle!r} not in {lines[0]!r}"


# ---------------------------------------------------------------------------------------
# The values found by hand and by the campaign

REPLAY_USAGE = [
    ("--capacity-factor", v) for v in ("inf", "-inf", "nan", "NaN", "1e999", "0", "-1", "abc",
                                       "", "1e7", "0x10", "1,5")
] + [
    ("--param", v) for v in ("macs.rho=abc", "macs.delta=-1", "macs.rho=nan", "macs.rho=inf",
                             "macs.rho=-inf", "macs.eps=0", "macs.eps=1e-300",
                             "macs.capacity_factor=1e999", "macs.min_capacity=1e7",
                             "macs.capacity_basis=x", "macs.capacity_basis=1",
                             "token-drop.drop_policy=1", "lottery.x=1", "macs.gamma=1",
                             "macs.rho", "=1", "macs.rho=", "MACS.rho=1", "macs..rho=1",
                             "macs.rho=1" + "0" * 5000)
] + [
    ("--device", v) for v in ("tpu", "", "CPU", "cuda:0", "mps")
] + [
    ("--policy", v) for v in ("lottery", ",", "", "macs,,x", "macs;token-drop", "x" * 10_000)
] + [
    ("--steps", v) for v in ("0", "-1", str(10**30), "1.5", "abc", "inf")
] + [
    ("--seed", v) for v in ("-1", str(2**64), "1.5", "nan", str(10**100))
] + [
    ("--network-rtol", v) for v in ("nan", "1", "-0.1", "inf", "-inf")
]


@pytest.mark.parametrize("option, value", REPLAY_USAGE,
                         ids=[f"{o}={v[:20]}" for o, v in REPLAY_USAGE])
def test_replay_refuses_a_bad_value_as_a_usage_error(option, value, out_dir, cli_imported):
    args = ["replay", "--trace", str(out_dir / "missing.mtrace"), "--steps", "1",
            "--out", str(out_dir / "r"), f"{option}={value}"]
    _usage_error(_run(args, out_dir, f"{option}={value[:20]}"), option, option)


def test_cuda_without_cuda_is_a_usage_error(out_dir, cli_imported, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["replay", "--steps", "1", "--device", "cuda", "--out", str(out_dir / "r")]
    result = _run(args, out_dir, "cuda")
    _usage_error(result, "--device", "cuda")
    assert "CUDA is not available" in result.output


@pytest.mark.parametrize("option, value, needle", [
    ("--topology", "nope", "unknown topology preset 'nope'"),
    ("--topology", "", "no topology given: a preset (8xH100"),
    ("--topology", "/nonexistent/t.yaml", "/nonexistent/t.yaml: cannot read topology file"),
    ("--topology", "\x00.yaml", "cannot read topology file"),
    ("--trace", "/nonexistent/x.mtrace", "/nonexistent/x.mtrace"),
])
def test_replay_names_what_it_cannot_read(option, value, needle, out_dir, cli_imported):
    args = ["replay", "--steps", "1", "--policy", "vanilla", "--out", str(out_dir / "r"),
            option, value]
    _library_error(_run(args, out_dir, f"{option}={value}"), needle, option)


def test_a_directory_as_topology(out_dir, cli_imported, tmp_path):
    args = ["replay", "--steps", "1", "--topology", str(tmp_path), "--out", str(out_dir / "r")]
    _library_error(_run(args, out_dir, "dir"), f"{tmp_path}: cannot read topology file", "dir")


SYNTH_USAGE = [
    ("--batch-size", v) for v in ("0", "-1", str(10**12), "1.5", "65536", "nan")
] + [
    ("--steps", v) for v in ("0", str(10**12), "-5")
] + [
    ("--seed", v) for v in ("-1", str(2**64))
] + [
    ("--decode-steps", v) for v in ("-1", str(10**12), "1e3")
]


@pytest.mark.parametrize("option, value", SYNTH_USAGE,
                         ids=[f"{o}={v}" for o, v in SYNTH_USAGE])
def test_synth_refuses_a_bad_value_as_a_usage_error(option, value, out_dir, cli_imported):
    args = ["synth", "--steps", "1", "--out", str(out_dir / "t.mtrace"), f"{option}={value}"]
    _usage_error(_run(args, out_dir, f"{option}={value}"), option, option)


@pytest.mark.parametrize("option, value, needle", [
    ("--model", "nope", "unknown model preset 'nope'"),
    ("--model", "", "unknown model preset ''"),
    ("--scenario", "nope", "unknown scenario 'nope'"),
    ("--scenario", "/nonexistent/s.yaml", "/nonexistent/s.yaml: cannot read scenario file"),
    ("--scenario", "/", "/: cannot read scenario file"),
    ("--scenario", "\x00", "unknown scenario"),
])
def test_synth_names_what_it_cannot_read(option, value, needle, out_dir, cli_imported):
    args = ["synth", "--steps", "1", "--out", str(out_dir / "t.mtrace"), option, value]
    _library_error(_run(args, out_dir, f"{option}={value}"), needle, option)


# ---------------------------------------------------------------------------------------
# Generated values

def _parsed_float(text: str) -> float | None:
    try:
        return float(text)
    except (ValueError, OverflowError):
        return None


_FLOAT_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-1e7, max_value=1e7).map(str),
    st.integers(min_value=-10**20, max_value=10**20).map(str),
    st.sampled_from(["0", "1e6", "1000000.0000001", "5e-324", "-0.0", "1_0", " 2 ", "٣"]),
    st.text(max_size=12),
)


@FUZZ
@given(value=_FLOAT_TEXT)
def test_capacity_factor_is_finite_and_in_range(value):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        args = ["replay", "--trace", str(out / "missing.mtrace"), "--steps", "1",
                "--out", str(out / "r"), f"--capacity-factor={value}"]
        result = _run(args, out, f"--capacity-factor={value!r}")
    number = _parsed_float(value)
    if number is not None and math.isfinite(number) and 0 < number <= MAX_CAPACITY_FACTOR:
        event("accepted")
        _library_error(result, "missing.mtrace", repr(value))  # got past the option
    else:
        _usage_error(result, "--capacity-factor", repr(value))


def _param_value(raw: str) -> object:
    """As the CLI documents it: an int if it parses as one, else a float, else the text."""
    for cast in (int, float):
        try:
            return cast(raw)
        except (ValueError, OverflowError):
            continue
    return raw


def _accepted(name: str, raw: str) -> bool:
    if name not in MACS_PARAMS or not raw:
        return False
    spec = MACS_PARAMS[name]
    value = _param_value(raw)
    if isinstance(spec[0], str):
        return value in spec
    if not isinstance(value, int | float):
        return False
    low, high, low_open = spec
    try:
        number = float(value)
    except OverflowError:
        return False
    return math.isfinite(number) and (number > low if low_open else number >= low) \
        and number <= high


@FUZZ
@given(name=st.sampled_from([*MACS_PARAMS, "gamma", "x"]),
       raw=st.one_of(_FLOAT_TEXT, st.sampled_from(["tokens", "weight", "probs", "Tokens"])))
def test_param_is_checked_against_what_the_policy_declares(name, raw):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        args = ["replay", "--trace", str(out / "missing.mtrace"), "--steps", "1",
                "--policy", "macs", "--out", str(out / "r"), f"--param=macs.{name}={raw}"]
        result = _run(args, out, f"macs.{name}={raw!r}")
    if _accepted(name, raw):
        event("accepted")
        _library_error(result, "missing.mtrace", f"macs.{name}={raw!r}")
    else:
        _usage_error(result, "--param", f"macs.{name}={raw!r}")


_RANGES = {"--batch-size": (1, MAX_BATCH), "--steps": (1, MAX_STEPS), "--seed": (0, MAX_SEED),
           "--decode-steps": (0, MAX_STEPS)}


@FUZZ
@given(option=st.sampled_from(sorted(_RANGES)),
       value=st.one_of(st.integers(min_value=-2**70, max_value=2**70),
                       st.integers(min_value=-3, max_value=MAX_BATCH + 3)))
def test_synth_counts_are_bounded(option, value):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        args = ["synth", "--model", "nope", "--steps", "1", "--out", str(out / "t.mtrace"),
                f"{option}={value}"]
        result = _run(args, out, f"{option}={value}")
    low, high = _RANGES[option]
    if low <= value <= high:
        event("accepted")
        _library_error(result, "unknown model preset 'nope'", f"{option}={value}")
    else:
        _usage_error(result, option, f"{option}={value}")


# ---------------------------------------------------------------------------------------
# What an accepted parameter does: a plan with finite numbers, at the ends of each range


def _tiny_batch():
    import torch

    g = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 16, 8, generator=g).softmax(-1)
    return dict(scores=scores, top_k=2, modality=torch.tensor([0, 1] * 8, dtype=torch.uint8),
                entropy=torch.rand(2, 16, generator=g) * 3,
                placement=torch.arange(8) // 2, expert_labels=torch.tensor([[1, -1, 0, 1] * 2] * 2),
                token_gpu=torch.arange(16) % 4)


@pytest.mark.parametrize("policy", ["vanilla", "token-drop", "expanded-drop", "macs"])
def test_accepted_parameters_at_their_limits_give_finite_plans(policy):
    import torch

    from macssim.policies import get_policy
    from macssim.policies._registry import policy_parameters

    batch = _tiny_batch()
    for name, spec in policy_parameters(policy).items():
        values = spec.choices or [spec.low if not spec.low_open else 1e-300, spec.high, 1.0]
        for value in values:
            def plan(name=name, value=value):
                return get_policy(policy, **{name: value})(**batch)

            outcome = run_bounded(plan, name=f"{policy}.{name}={value}")
            assert outcome.error is None, f"{policy}.{name}={value}: {outcome.error}"
            p = outcome.value
            assert torch.isfinite(p.weights).all(), f"{policy}.{name}={value}"
            if p.capacity is not None:
                assert torch.isfinite(p.capacity.double()).all(), f"{policy}.{name}={value}"


CAPTURE_USAGE = [
    ("--batch-size", v) for v in ("0", "-1", str(10**12), "1.5")
] + [
    ("--max-tokens", v) for v in ("0", str(10**12))
] + [
    ("--decode-steps", v) for v in ("-5", str(10**12))
] + [
    ("--seed", v) for v in ("-1", str(2**64))
] + [
    ("--dtype", "float8"), ("--device", "tpu"), ("--rank", "-2"), ("--image-token-id", "-1"),
]


@pytest.mark.parametrize("option, value", CAPTURE_USAGE,
                         ids=[f"{o}={v}" for o, v in CAPTURE_USAGE])
def test_capture_refuses_a_bad_value_as_a_usage_error(option, value, out_dir, cli_imported):
    """Checked before any model is built (these run in milliseconds)."""
    args = ["capture", "--tiny", "qwen3-vl-moe", "--out", str(out_dir / "c.mtrace"),
            f"{option}={value}"]
    _usage_error(_run(args, out_dir, f"{option}={value}"), option, option)
