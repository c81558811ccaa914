"""YAML aliases are refused everywhere the project reads YAML (issue 16, item 1).

A 364-byte file of nested anchors ("billion laughs") expands to 9^9 items as soon as anything walks or prints
it. Each command runs in a fresh process whose address space is capped at 1.5 GB above what its imports use, so
an expansion fails fast instead of filling the machine; the assertion is exit code 2, a message naming the file,
and peak-RSS growth under 200 MB within a few seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import write_karpathy_fixture
from dcd_itr.config import apply_override, load_config
from dcd_itr.errors import ConfigError, CorruptFileError, short_repr
from dcd_itr.models.registry import build_model_from_description
from dcd_itr.tasks.dual_contrastive import DualTrainingConfig
from dcd_itr.yaml_io import load_yaml_text

LOL = '["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'
LEVELS = "abcdefgh"


def bomb(last_key: str) -> str:
    """Nine levels of nine aliases: 9^9 (387 million) strings once expanded; ``last_key`` holds the top."""
    lines = [f"{LEVELS[0]}: &{LEVELS[0]} {LOL}"]
    for previous, name in zip(LEVELS, LEVELS[1:], strict=False):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    lines.append(f"{last_key}: [" + ",".join([f"*{LEVELS[-1]}"] * 9) + "]")
    return "\n".join(lines) + "\n"


CHILD = r"""
import json, resource, sys, time
from dcd_itr.cli import main
import dcd_itr.models.end_to_end, dcd_itr.search.build  # what the commands import lazily, before the baseline
def vm_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
cap = vm_bytes() + 1_500_000_000  # an expansion dies with MemoryError here instead of filling the machine
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
start = time.perf_counter()
try:
    rc = main(sys.argv[1:])
except BaseException as error:
    rc = f"{type(error).__name__}"
growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print("RESULT " + json.dumps({"rc": rc, "growth_mb": growth / 1024, "seconds": time.perf_counter() - start}))
"""


def run_bounded(*args: str) -> tuple[dict, str]:
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", **_pythonpath()},
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, completed.stderr[-2000:]
    return json.loads(lines[-1][len("RESULT ") :]), completed.stderr


def _pythonpath() -> dict[str, str]:
    return {"PYTHONPATH": ":".join(p for p in sys.path if p)}


def test_the_bomb_is_small_and_is_what_plain_safe_load_accepts():
    text = bomb("kind")
    assert len(text.encode()) < 400  # the report's file was 364 bytes
    assert yaml.safe_load(text)["kind"][0][0][0] is not None  # shared references: cheap until walked


def test_loader_refuses_aliases_and_names_the_source():
    with pytest.raises(ConfigError, match=r"x\.yaml: YAML aliases .* not allowed \(line 2, column 4\)"):
        load_yaml_text("a: &a [1]\nb: *a\n", "x.yaml")
    with pytest.raises(ConfigError, match="aliases"):
        load_yaml_text("base: &b {x: 1}\nother:\n  <<: *b\n", "merge.yaml")
    assert load_yaml_text("a: [1, 2]\nb: {c: d}\n", "plain.yaml") == {"a": [1, 2], "b": {"c": "d"}}


def test_override_values_are_read_by_the_same_loader():
    data: dict = {}
    with pytest.raises(ConfigError, match="aliases"):
        apply_override(data, "train.x=[&a [1, 2], *a]")


def test_short_repr_is_bounded_for_a_shared_reference_bomb():
    value = yaml.safe_load(bomb("kind"))["kind"]
    assert len(short_repr(value)) <= 120


def test_model_yaml_bomb_and_list_kind_are_one_line_errors(tmp_path):
    (tmp_path / "model.yaml").write_text(bomb("kind"))
    with pytest.raises(CorruptFileError, match=r"model\.yaml: YAML aliases"):
        build_model_from_description(tmp_path)
    (tmp_path / "model.yaml").write_text("kind: [dual, fusion]\nconfig: {}\n")  # unhashable kind
    with pytest.raises(CorruptFileError, match=r"model\.yaml: kind: unknown model kind \['dual', 'fusion'\]"):
        build_model_from_description(tmp_path)


def test_run_config_bomb_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(bomb("out"))
    with pytest.raises(ConfigError, match=r"run\.yaml: YAML aliases"):
        load_config(path, DualTrainingConfig)


@pytest.fixture
def bomb_inputs(tmp_path: Path) -> dict[str, Path]:
    data = write_karpathy_fixture(tmp_path / "data")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.yaml").write_text(bomb("kind"))
    (model / "model.safetensors").write_bytes(b"\0" * 16)  # never reached: the description fails first
    config = tmp_path / "run.yaml"
    config.write_text(bomb("out"))
    return {"data": data, "model": model, "config": config, "root": tmp_path}


@pytest.mark.parametrize("command", ["eval", "index build", "train-dual"])
def test_alias_bomb_through_the_cli_is_refused_fast_with_bounded_memory(bomb_inputs, command):
    paths = bomb_inputs
    args = {
        "eval": ["eval", "--model", str(paths["model"]), "--data", str(paths["data"]), "--features", "x"],
        "index build": [
            *("index", "build", "--model", str(paths["model"]), "--data", str(paths["data"])),
            *("--out", str(paths["root"] / "index"), "--quiet"),
        ],
        "train-dual": ["train-dual", "--config", str(paths["config"]), "--quiet"],
    }[command]
    result, stderr = run_bounded(*args)
    named = paths["config"] if command == "train-dual" else paths["model"] / "model.yaml"
    assert result["rc"] == 2, stderr[-2000:]
    assert f"{named}: YAML aliases (*name) are not allowed" in stderr
    assert "Traceback" not in stderr and len(stderr) < 1000
    assert result["growth_mb"] < 200
    assert result["seconds"] < 10


def test_yaml_files_over_the_size_limit_are_refused(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("out: x\n" + "#" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"huge\.yaml: \d+ bytes, over the limit of 1048576"):
        load_config(path, DualTrainingConfig)
