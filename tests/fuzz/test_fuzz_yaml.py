"""Fuzzing the topology and scenario readers with a corpus generated from the bundled
presets: every field of ``8xH100``, ``16xH100`` and every bundled scenario given the wrong
type, NaN, ±inf, a negative, zero, a huge number or a float where an integer belongs;
required keys deleted, unknown keys added; alias bombs, python tags, non-UTF-8 bytes,
deep nesting, an empty file, a directory. For each case the reader either loads, and then
every value is finite and within the range this file states for the field (written here
independently of the readers), or raises a ``MacssimError`` naming the file, and the field
where one is at fault; nothing else, within the harness's time and memory bounds. A
sample of the failing cases goes through ``macssim replay`` / ``macssim synth``: exit code
1, one ``Error:`` line naming the file, nothing written.
"""

from __future__ import annotations

import copy
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from macssim._resources import SCENARIOS_DIR, TOPOLOGIES_DIR
from macssim.hardware import Topology, load_topology
from macssim.trace import Scenario, load_scenario
from tests.fuzz._harness import assert_names, invoke_cli, run_bounded

# ---------------------------------------------------------------------------------------
# What a loaded file may hold: the ranges documented for each field (docs/cluster.md,
# the module docstrings), written out here rather than imported.

MAX_GPUS = 1024
MAX_GPUS_PER_NODE = 72
MAX_BATCH = 65536
MAX_STEPS = 1 << 20
MAX_TOKENS_PER_STEP = 1 << 20

TOPOLOGY_NUMBERS = {  # dotted field -> (low, high), inclusive
    "gpu.bf16_flops_per_s": (1e9, 1e18),
    "gpu.fp8_flops_per_s": (1e9, 1e18),  # optional: None (absent) is allowed
    "gpu.fp8_compute_efficiency": (1e-3, 1.0),  # optional too
    "gpu.hbm_bytes_per_s": (1e6, 1e15),
    "gpu.memory_bytes": (1e6, 1e15),
    "gpu.compute_efficiency": (1e-3, 1.0),
    "gpu.memory_efficiency": (1e-3, 1.0),
    "nvlink.bw_bytes_per_s": (1e6, 1e15),
    "nvlink.latency_s": (0.0, 1.0),
    "nvlink.efficiency": (1e-3, 1.0),
    "nic.rate_bytes_per_s": (1e6, 1e15),
    "nic.latency_s": (0.0, 1.0),
    "nic.efficiency": (1e-3, 1.0),
    "switch.latency_s": (0.0, 1.0),
    "switch.fabric_bw_bytes_per_s": (1e6, 1e18),
}


def _is_number(x: Any, low: float, high: float) -> bool:
    return (isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
            and low <= x <= high)


def _is_int(x: Any, low: int, high: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and low <= x <= high


def _is_text(x: Any) -> bool:
    return isinstance(x, str) and bool(x.strip())


def assert_topology_in_range(t: Topology, name: str) -> None:
    assert isinstance(t, Topology), name
    assert _is_text(t.name) and _is_text(t.gpu.kind), name
    assert _is_int(t.gpus_per_node, 1, MAX_GPUS_PER_NODE), (name, t.gpus_per_node)
    assert _is_int(t.nodes, 1, MAX_GPUS) and t.nodes * t.gpus_per_node <= MAX_GPUS, name
    for field, (low, high) in TOPOLOGY_NUMBERS.items():
        section, key = field.split(".")
        spec = getattr(t, section)
        if spec is None or (field == "switch.fabric_bw_bytes_per_s" and spec.fabric_bw_bytes_per_s
                            is None) or (field.startswith("gpu.fp8_")
                                         and getattr(spec, key) is None):
            continue
        assert _is_number(getattr(spec, key), low, high), (name, field, getattr(spec, key))
    if t.nodes > 1:
        assert t.nic is not None and t.switch is not None, name
    if t.nic is not None:
        assert _is_int(t.nic.per_node, 1, t.gpus_per_node), name
        assert t.gpus_per_node % t.nic.per_node == 0, name
    if t.switch is not None:
        assert isinstance(t.switch.non_blocking, bool), name
        assert t.switch.non_blocking or t.switch.fabric_bw_bytes_per_s is not None, name


def assert_scenario_in_range(s: Scenario, name: str) -> None:
    assert isinstance(s, Scenario), name
    assert _is_text(s.name) and isinstance(s.description, str), name
    assert _is_int(s.batch_size, 1, MAX_BATCH), (name, s.batch_size)
    assert _is_int(s.decode_steps, 0, MAX_STEPS), (name, s.decode_steps)
    assert s.requests, name
    for k in s.requests:
        assert _is_text(k.name), name
        # weights in a file are in [1e-6, 1e6]; a blend scales them down, never to 0
        assert _is_number(k.weight, 0.0, 1e6) and k.weight > 0, (name, k.weight)
        assert _is_number(k.redundant_frac, 0.0, 1.0), (name, k.redundant_frac)
        for lo, hi in (k.image_tokens, k.video_tokens, k.text_tokens):
            assert _is_int(lo, 0, MAX_TOKENS_PER_STEP) and _is_int(hi, lo, MAX_TOKENS_PER_STEP)
        assert k.image_tokens[0] + k.video_tokens[0] + k.text_tokens[0] >= 1, name
        prompt = k.image_tokens[1] + k.video_tokens[1] + k.text_tokens[1]
        assert s.batch_size * prompt <= MAX_TOKENS_PER_STEP, (name, s.batch_size, prompt)
    assert all(isinstance(x, str) for x in s.sources), name
    for part, weight in s.blend:
        assert _is_text(part) and _is_number(weight, 1e-6, 1e6), (name, part, weight)


# ---------------------------------------------------------------------------------------
# The corpus


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # "topology" or "scenario"
    content: bytes | None  # None: the path is a directory
    needle: str | None = None  # the field a message must name, where one is at fault


TOPOLOGY_PRESETS = ("8xH100", "16xH100")
SCENARIO_PRESETS = tuple(sorted(p.stem for p in SCENARIOS_DIR.glob("*.yaml")))
UNKNOWN_KEY = "fuzz_unknown_key"


def _mutations(value: Any) -> Iterator[tuple[str, Any]]:
    """Each wrong thing a field can hold. Every field gets its type swapped (str, list,
    dict, bool, null, a number); a number also gets NaN, ±inf, a negative, zero, huge
    values and a float for an integer (a fractional and a subnormal one for a float)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(value, str):
        yield "empty-str", ""
        yield "long-str", "x" * 1000
    else:
        yield "str", "fast"
    if not isinstance(value, list):
        yield "list", [1, 2]
    if not isinstance(value, dict):
        yield "dict", {"x": 1}
    yield "bool", not value if isinstance(value, bool) else True
    yield "null", None
    yield "nan", float("nan")
    yield "huge-int", 10**18
    if not number:
        return
    yield "inf", float("inf")
    yield "-inf", float("-inf")
    yield "negative", -abs(value) if value else -1
    if value != 0:
        yield "zero", 0
    yield "huge-float", 1e308
    if isinstance(value, int):
        yield "float-for-int", value + 0.5
    else:
        yield "subnormal", 5e-324


def _paths(node: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every key path in ``node``: sections, leaves, list items (both ends of a
    ``[min, max]`` pair, the first item of other lists: the rest are alike)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        pair = len(node) == 2 and all(isinstance(v, int) for v in node)
        for i, value in enumerate(node[:2] if pair else node[:1]):
            yield (*prefix, i)
            yield from _paths(value, (*prefix, i))


def _get(data: Any, path: tuple) -> Any:
    for key in path:
        data = data[key]
    return data


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's: 10x faster


def _dump(data: Any) -> bytes:
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, allow_unicode=True).encode()


def _needle(what: str, path: tuple) -> str:
    """How a message names the field at ``path``: a topology by its dotted key; a scenario
    by the key nearest the leaf (``requests[0]: "weight"``, ``"blend.chat"``)."""
    if what == "topology":
        return ".".join(str(k) for k in path)
    if path[0] == "blend" and len(path) > 1:
        return f"blend.{path[1]}"
    if path[0] == "requests" and len(path) == 2:
        return f"requests[{path[1]}]"
    keys = [k for k in path if isinstance(k, str)]
    return keys[-1]


def _field_cases(what: str, stem: str, data: dict) -> Iterator[Case]:
    for path in _paths(data):
        original = _get(data, path)
        field = ".".join(str(k) for k in path)
        for label, value in _mutations(original):
            mutated = copy.deepcopy(data)
            _get(mutated, path[:-1])[path[-1]] = value
            yield Case(f"{what}:{stem}:{field}={label}", what, _dump(mutated),
                       _needle(what, path))
        if isinstance(path[-1], str):  # delete the key
            mutated = copy.deepcopy(data)
            del _get(mutated, path[:-1])[path[-1]]
            yield Case(f"{what}:{stem}:{field}=deleted", what, _dump(mutated),
                       _needle(what, path))
        if isinstance(original, dict):  # an unknown key beside the known ones
            mutated = copy.deepcopy(data)
            _get(mutated, path)[UNKNOWN_KEY] = 1
            yield Case(f"{what}:{stem}:{field}+unknown", what, _dump(mutated), UNKNOWN_KEY)
    mutated = dict(data, **{UNKNOWN_KEY: 1})
    yield Case(f"{what}:{stem}:top+unknown", what, _dump(mutated), UNKNOWN_KEY)


_BOMB = "\n".join(["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
    f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]) + "\n"
MARKER_NAME = "fuzz-code-was-executed"
"""A python tag that ran would create this file in the corpus folder (cwd of the case)."""


def _special_cases(what: str, base: bytes) -> Iterator[Case]:
    marker = f"touch {MARKER_NAME}"
    specials: dict[str, bytes | None] = {
        "alias-bomb": _BOMB.encode(),
        "alias-bomb-in-field": base + b"\n" + _BOMB.replace("a9:", "fuzz:").encode(),
        "recursive-alias": b"a: &a [*a]\n",
        "python-apply": f"name: !!python/object/apply:os.system ['{marker}']\n".encode(),
        "python-apply-top": f"!!python/object/apply:os.system ['{marker}']\n".encode(),
        "python-new": f"!!python/object/new:os.system ['{marker}']\n".encode(),
        "python-name": b"name: !!python/name:os.system\n",
        "python-module": b"name: !!python/module:os\n",
        "non-utf8": b"name: \xff\xfe\xfd\n" + base,
        "utf16": base.decode().encode("utf-16"),
        "nul-bytes": base.replace(b":", b"\x00:", 1),
        "deep-lists": b"name: " + b"[" * 50_000 + b"]" * 50_000 + b"\n",
        "deep-maps": b"{a: " * 5_000 + b"1" + b"}" * 5_000 + b"\n",
        "empty": b"",
        "only-comment": b"# nothing here\n",
        "scalar": b"42\n",
        "list": b"- 1\n- 2\n",
        "bad-yaml": b"name: [unclosed\n",
        "tabs": b"name:\t\t- x\n\t- y\n",
        "too-large": b"# " + b"x" * (1 << 20) + b"\n",
        "huge-int-literal": base + b"\nfuzz: 1" + b"0" * 10_000 + b"\n",
        "unhashable-key": b"? [a, b]\n: 1\n",
        "non-string-key": b"1: 2\n",
        "binary-tag": b"name: !!binary aGVsbG8=\n",
        "timestamp": b"name: 2001-12-14\n",
        "set-tag": b"name: !!set {a, b}\n",
        "multi-document": base + b"\n---\n" + base,
        "directory": None,
    }
    for label, content in specials.items():
        yield Case(f"{what}:special:{label}", what, content)


def _corpus() -> list[Case]:
    cases: list[Case] = []
    for stem in TOPOLOGY_PRESETS:
        text = (TOPOLOGIES_DIR / f"{stem}.yaml").read_bytes()
        cases += _field_cases("topology", stem, yaml.safe_load(text))
    cases += _special_cases("topology", (TOPOLOGIES_DIR / "8xH100.yaml").read_bytes())
    for stem in SCENARIO_PRESETS:
        text = (SCENARIOS_DIR / f"{stem}.yaml").read_bytes()
        cases += _field_cases("scenario", stem, yaml.safe_load(text))
    cases += _special_cases("scenario", (SCENARIOS_DIR / "docvqa.yaml").read_bytes())
    return cases


CORPUS = _corpus()
_IDS = [c.id for c in CORPUS]
assert len(set(_IDS)) == len(_IDS)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """A folder holding the bundled scenarios (the parts a fuzzed blend refers to); each
    case writes its file here under its own name."""
    folder = tmp_path_factory.mktemp("corpus")
    for stem in SCENARIO_PRESETS:
        shutil.copy(SCENARIOS_DIR / f"{stem}.yaml", folder / f"{stem}.yaml")
    return folder


def _write(case: Case, folder: Path, index: int) -> Path:
    path = folder / f"case{index:05d}.yaml"
    if case.content is None:
        path.mkdir(exist_ok=True)
    else:
        path.write_bytes(case.content)
    return path


def _load(case: Case, path: Path):
    return load_topology(path) if case.what == "topology" else load_scenario(path)


def _group(case_id: str) -> str:
    """Cases of one field (all its mutations) run as one test: pytest's own cost per test
    is close to a case's, and a failure names its case anyway."""
    return case_id.split("=")[0].split("+")[0] if ":special:" not in case_id else case_id


GROUPS: dict[str, list[int]] = {}
for _i, _case in enumerate(CORPUS):
    GROUPS.setdefault(_group(_case.id), []).append(_i)


def _check_case(index: int, folder: Path) -> None:
    case = CORPUS[index]
    path = _write(case, folder, index)
    outcome = run_bounded(lambda: _load(case, path), name=case.id)
    assert not (folder / MARKER_NAME).exists(), f"{case.id}: a python tag ran"
    if outcome.error is None:
        if case.what == "topology":
            assert_topology_in_range(outcome.value, case.id)
        else:
            assert_scenario_in_range(outcome.value, case.id)
        return
    message = str(outcome.error)
    assert message.startswith(f"{path}: "), f"{case.id}: {message}"
    assert "\n" not in message, f"{case.id}: a message of several lines: {message!r}"
    assert len(message) < len(str(path)) + 2000, f"{case.id}: {len(message)} characters"
    if case.needle is not None:
        assert_names(message, case.needle)


@pytest.mark.parametrize("group", list(GROUPS))
def test_a_fuzzed_file_loads_in_range_or_fails_naming_the_file(group, corpus_dir,
                                                               monkeypatch):
    monkeypatch.chdir(corpus_dir)  # where a python tag would leave its marker
    for index in GROUPS[group]:
        _check_case(index, corpus_dir)


def test_the_corpus_is_what_it_says():
    """Every preset field got every mutation; the bundled files themselves load."""
    assert len(CORPUS) > 1000
    labels = {c.id.rsplit("=", 1)[-1] for c in CORPUS if "=" in c.id}
    assert {"str", "list", "dict", "bool", "null", "nan", "inf", "-inf", "negative", "zero",
            "huge-float", "huge-int", "float-for-int", "deleted"} <= labels
    for stem in TOPOLOGY_PRESETS:
        assert_topology_in_range(load_topology(stem), stem)
    for stem in SCENARIO_PRESETS:
        assert_scenario_in_range(load_scenario(SCENARIOS_DIR / f"{stem}.yaml"), stem)


def test_a_path_with_a_nul_byte_or_too_long_a_name(tmp_path):
    from macssim import MacssimError

    for bad in ("a\x00b.yaml", "x" * 5000 + ".yaml", str(tmp_path / ("y" * 300 + ".yaml"))):
        for load in (load_topology, load_scenario):
            outcome = run_bounded(lambda load=load, bad=bad: load(bad), name=repr(bad[:20]))
            assert isinstance(outcome.error, MacssimError)
            assert "cannot read" in str(outcome.error)


# ---------------------------------------------------------------------------------------
# Through the command line: a sample of the failing cases

@pytest.fixture(scope="module")
def cli_imported() -> None:
    """Import what the commands import lazily (torch, pandas, plotting) once, outside the
    harness: an import under ``tracemalloc`` takes seconds and is no part of a case."""
    import tqdm  # noqa: F401

    import macssim.cli  # noqa: F401
    import macssim.replay  # noqa: F401
    import macssim.report  # noqa: F401


_CLI_SPECIALS = ("alias-bomb", "recursive-alias", "python-apply", "python-new", "non-utf8",
                 "deep-lists", "empty", "too-large", "huge-int-literal", "directory")
CLI_SAMPLE = [i for i, c in enumerate(CORPUS)
              if i % 41 == 0 or c.id.rsplit(":", 1)[-1] in _CLI_SPECIALS]


@pytest.mark.parametrize("index", CLI_SAMPLE, ids=[_IDS[i] for i in CLI_SAMPLE])
def test_the_cli_fails_in_one_line_naming_the_file_and_writes_nothing(index, corpus_dir,
                                                                      tmp_path, monkeypatch,
                                                                      cli_imported):
    case = CORPUS[index]
    monkeypatch.chdir(corpus_dir)
    path = _write(case, corpus_dir, index)
    if run_bounded(lambda: _load(case, path), name=case.id).error is None:
        pytest.skip("loads: nothing to refuse")
    out = tmp_path / "out"
    out.mkdir()
    if case.what == "topology":
        args = ["replay", "--topology", str(path), "--policy", "vanilla", "--steps", "1",
                "--out", str(out / "r")]
    else:
        args = ["synth", "--scenario", str(path), "--steps", "1", "--out",
                str(out / "t.mtrace")]
    result = invoke_cli(args, name=case.id)
    assert result.exit_code == 1, f"{case.id}: exit {result.exit_code}\n{result.output}"
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"{case.id}: {result.output}"
    assert_names(lines[0], str(path))
    assert list(out.iterdir()) == [], f"{case.id}: wrote {list(out.iterdir())}"
    assert not (corpus_dir / MARKER_NAME).exists()
