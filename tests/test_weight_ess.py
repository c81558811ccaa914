"""benchmarks/weight_ess.py: the ESS of DCD's weights on teacher lists, against hand-computed values."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from dcd_itr.errors import CorruptFileError  # noqa: E402
from weight_ess import WEIGHTINGS, batch_ess, main, measure  # noqa: E402

DCD = WEIGHTINGS["dcd (entropy / paper)"]


def test_equal_entropies_give_uniform_weights() -> None:
    label_ess, distill_ess = batch_ess(torch.full((8,), 0.7, dtype=torch.float64), 4, DCD)
    assert math.isclose(label_ess, 4.0) and math.isclose(distill_ess, 4.0)


def test_one_unsure_list_per_batch_holds_all_label_weight() -> None:
    """Entropies (0, 0, 0, 1) per batch: w = (0, 0, 0, 1), ESS 1; r = softmax((1 - w)^2) = (e, e, e, 1) / (3e + 1)."""
    entropy = torch.tensor([0.0, 0.0, 0.0, 1.0] * 3, dtype=torch.float64)
    label_ess, distill_ess = batch_ess(entropy, 4, DCD)
    r = [math.e / (3 * math.e + 1)] * 3 + [1 / (3 * math.e + 1)]
    assert math.isclose(label_ess, 1.0)
    assert math.isclose(distill_ess, 1 / sum(x * x for x in r))


def test_a_trailing_partial_batch_is_dropped() -> None:
    entropy = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 5.0], dtype=torch.float64)
    assert batch_ess(entropy, 4, DCD) == pytest.approx((4.0, 4.0))


def test_zscore_at_low_weight_temperature_concentrates_dcd_weights() -> None:
    """Lists whose positive stands alone get ~0 entropy at T_w = 0.25 after z-scoring; lists with a close
    runner-up keep ~log 2 nats, so the label weights go to them (ESS = the number of such lists per batch)."""
    alone = [10.0, 0.0, 0.0, 0.0]
    close_pair = [10.0, 10.0, 0.0, 0.0]
    logits = torch.tensor([alone] * 6 + [close_pair] * 2)  # one batch of 8 after any shuffle
    rows = measure(logits, 8, ["zscore"], [0.25])
    dcd = next(r for r in rows if r["weighting"] == "dcd (entropy / paper)")

    def hand_entropy(row: list[float]) -> float:
        mu = sum(row) / len(row)
        sigma = math.sqrt(sum((t - mu) ** 2 for t in row) / len(row))
        scaled = [(t - mu) / (sigma + 1e-6) / 0.25 for t in row]
        exps = [math.exp(x - max(scaled)) for x in scaled]
        return -sum(e / sum(exps) * math.log(e / sum(exps)) for e in exps)

    entropies = [hand_entropy(alone)] * 6 + [hand_entropy(close_pair)] * 2
    w = [h / sum(entropies) for h in entropies]
    assert dcd["label_ess"] == pytest.approx(1 / sum(x * x for x in w), rel=1e-9)
    assert 2.0 < dcd["label_ess"] < 2.2  # the two close lists hold nearly all the label weight
    assert dcd["positive_first"] == 1.0


def test_cli_writes_markdown_and_json(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    save_file({"teacher_logits": torch.randn(16, 4)}, str(cache / "round-0000-image_to_text.safetensors"))
    argv = ["weight_ess.py", "--teacher-cache", str(cache), "--batch", "8", "--results", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    assert "| zscore | 0.25 | dcd (entropy / paper) |" in (tmp_path / "weight_ess.md").read_text()
    assert (tmp_path / "weight_ess.json").is_file()


def test_cli_names_a_folder_without_round_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["weight_ess.py", "--teacher-cache", str(tmp_path)])
    with pytest.raises(SystemExit):
        main()


def test_cli_names_a_corrupt_round_file(tmp_path: Path, monkeypatch) -> None:
    bad = tmp_path / "round-0000-text_to_image.safetensors"
    bad.write_bytes(b"not a safetensors file")
    monkeypatch.setattr(sys, "argv", ["weight_ess.py", "--teacher-cache", str(tmp_path)])
    with pytest.raises(CorruptFileError, match="round-0000-text_to_image.safetensors"):
        main()
