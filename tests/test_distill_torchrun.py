"""`dcd distill` under torchrun: two CPU ranks (gloo), started with the environment torchrun gives each process,
share the teacher's pool scoring and train data-parallel. The teacher-score cache they build equals the one a
single process builds, and the run folder holds one finished run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dcd_itr.cli import main
from helpers import spawn_ranks, write_karpathy_fixture

WORLD_SIZE = 2
JOIN_TIMEOUT_S = 180  # start-up and a tiny run take seconds; a hang fails instead of waiting
TEACHER = f"python:{Path(__file__).with_name('plugin_teachers.py')}:ColourNameTeacher"


def _rank_main(rank: int, port: int, config: str) -> None:
    """What torchrun does for each process: set the rendezvous environment, then run the command."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)  # two ranks share the test machine's cores
    assert main(["distill", "--config", config, "--quiet"]) == 0


@pytest.mark.slow
def test_two_ranks_share_the_teacher_and_match_one_process(tmp_path, tiny_vit_path, tiny_bert_path):
    data = write_karpathy_fixture(tmp_path / "data")
    views = {"image_view": f"hf:{tiny_vit_path}@32", "text_view": f"hf:{tiny_bert_path}@16"}
    features = ["features", "--data", str(data), "--out", str(tmp_path / "cache"), "--quiet"]
    assert (
        main([*features, "--image-encoder", views["image_view"], "--text-encoder", views["text_view"]]) == 0
    )
    configs = {}
    for name in ("single", "ranks"):
        configs[name] = tmp_path / f"{name}.yaml"
        config = {
            "data": str(data),
            "features": str(tmp_path / "cache"),
            "out": str(tmp_path / name),
            "teacher": TEACHER,
            "teacher_cache": str(tmp_path / f"{name}_scores"),
            "dual": {
                **views,
                "image_dim": 32,
                "text_dim": 32,
                "hidden_dim": 16,
                "embed_dim": 8,
                "dropout": 0.0,
            },
            "pool_size": 4,
            "num_candidates": 3,
            "anchors_per_batch": 2,
            "train": {"epochs": 1, "lr": 0.01},
        }
        configs[name].write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["distill", "--config", str(configs["single"]), "--quiet"]) == 0
    spawn_ranks(_rank_main, (str(configs["ranks"]),), WORLD_SIZE, JOIN_TIMEOUT_S)

    single = sorted((tmp_path / "single_scores").rglob("round-*.safetensors"))
    shared = sorted((tmp_path / "ranks_scores").rglob("round-*.safetensors"))
    assert [path.name for path in shared] == [path.name for path in single] and len(single) == 2
    for mine, theirs in zip(shared, single, strict=True):
        got, expected = load_file(str(mine)), load_file(str(theirs))
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    assert (tmp_path / "ranks" / "best" / "model.safetensors").is_file()
    steps = {
        name: json.loads((tmp_path / name / "last" / "state.json").read_text())["step"] for name in configs
    }
    assert steps == {"single": 8, "ranks": 4}  # 8 batches of 2 anchors: one per rank per step, data-parallel
    assert not list((tmp_path / "ranks").glob("last.*"))  # no half-swapped checkpoint left behind
