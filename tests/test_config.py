"""Typed YAML configs: round trips, strict fields, errors naming the file and field, overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dcd_itr.config import config_to_dict, load_config, save_config
from dcd_itr.errors import ConfigError


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)


@dataclass
class RunConfig:
    name: str = "run"
    epochs: int = 3
    out: Path = Path("results")
    teacher: str | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)


def test_round_trip(tmp_path: Path) -> None:
    config = RunConfig(
        name="x", epochs=5, teacher="t.safetensors", optim=OptimConfig(lr=0.5, betas=(0.8, 0.9))
    )
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml", RunConfig) == config
    assert config_to_dict(config)["out"] == "results"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs: three\n", r"c.yaml: epochs: expected int, got 'three'"),
        ("epochs: true\n", r"c.yaml: epochs: expected int, got True"),
        ("optim:\n  lr: fast\n", r"c.yaml: optim.lr: expected float, got 'fast'"),
        ("optim:\n  momentum: 0.9\n", r"c.yaml: optim: unknown field\(s\) \['momentum'\]"),
        ("optim: [1]\n", r"c.yaml: optim: expected a mapping"),
        ("epochs: [\n", r"c.yaml: malformed YAML"),
        ("- 1\n", r"c.yaml: expected a mapping at the top level"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "c.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "c.yaml", RunConfig)


def test_overrides_and_int_to_float(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 1\n", encoding="utf-8")
    config = load_config(
        tmp_path / "c.yaml", RunConfig, ["epochs=7", "optim.betas=[0.5, 0.6]", "teacher=null"]
    )
    assert config.epochs == 7 and config.optim.lr == 1.0 and config.optim.betas == (0.5, 0.6)
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(tmp_path / "c.yaml", RunConfig, ["epochs"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml", RunConfig)
