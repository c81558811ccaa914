"""The paired-seed statistics of benchmarks/stats.py against hand-computed values."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from stats import mean_and_std, paired_difference, t_quantile_975, verdict_sentence  # noqa: E402


def test_paired_difference_matches_hand_values() -> None:
    # differences 2, 3, 4: mean 3, sample std 1, half width t(2) * 1 / sqrt(3) = 4.302652730 / 1.7320508 = 2.48414
    result = paired_difference([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])
    assert (result.mean, result.std, result.n) == (3.0, 1.0, 3)
    assert result.low == pytest.approx(3.0 - 2.484138, abs=1e-6)
    assert result.high == pytest.approx(3.0 + 2.484138, abs=1e-6)
    assert result.verdict == "better"
    assert verdict_sentence("dcd", "static", result) == (
        "dcd − static = +3.0 RSUM (95% CI 0.5…5.5, 3 paired seeds): dcd better"
    )


def test_interval_containing_zero_says_no_difference_detected() -> None:
    # differences 1, -1, 3, 1, -2: mean 0.4, sample std sqrt(15.2 / 4) = 1.949359, t(4) = 2.776445105
    result = paired_difference([201.0, 199.0, 203.0, 202.0, 198.0], [200.0, 200.0, 200.0, 201.0, 200.0])
    half_width = 2.776445105 * math.sqrt(15.2 / 4) / math.sqrt(5)
    assert result.mean == pytest.approx(0.4)
    assert (result.low, result.high) == pytest.approx((0.4 - half_width, 0.4 + half_width))
    assert result.verdict == "no difference detected"
    assert verdict_sentence("dcd", "static", result).endswith("5 paired seeds): no difference detected")
    assert paired_difference([1.0, 2.0], [3.0, 5.0]).verdict == "no difference detected"  # t(1) = 12.7: wide
    assert paired_difference([1.0, 2.0, 3.0], [4.0, 5.1, 6.0]).verdict == "worse"


def test_pairing_removes_the_shared_seed_variance() -> None:
    # the rows vary a lot between seeds but always differ by ~1: a paired interval excludes 0
    a, b = [190.0, 210.0, 200.0, 220.0, 180.0], [189.0, 209.2, 198.9, 219.1, 178.8]
    assert paired_difference(a, b).verdict == "better"


def test_t_quantiles() -> None:
    assert t_quantile_975(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile_975(4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile_975(31) == pytest.approx(2.0395, abs=2e-4)
    assert t_quantile_975(1000) == pytest.approx(1.9623, abs=1e-4)
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 10, 29, 30, 31, 60, 200):
        assert t_quantile_975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-4)
    with pytest.raises(ValueError, match=">= 2 paired values"):
        paired_difference([1.0], [2.0])


def test_mean_and_std_uses_the_sample_std() -> None:
    assert mean_and_std([1.0, 2.0, 3.0]) == "2.0 ± 1.0"  # population std would be 0.8
    assert mean_and_std([5.0]) == "5.0"


def test_ablation_table_has_sample_stds_ess_and_paired_verdicts() -> None:
    from ablation import markdown

    def runs(rsums: list[float], ess: float | None = None) -> dict:
        rows = []
        for seed, rsum in enumerate(rsums):
            row = {key: rsum / 6 for key in ("image_to_text_R@1", "image_to_text_R@5", "image_to_text_R@10")}
            row |= {key: rsum / 6 for key in ("text_to_image_R@1", "text_to_image_R@5", "text_to_image_R@10")}
            row |= {"rsum": rsum, "seed": seed} | ({"label_ess": ess, "distill_ess": 63.0} if ess else {})
            rows.append(row)
        return {"chosen": [], "runs": rows}

    table = markdown(
        {"dual / static-ce": runs([200.0, 202.0, 204.0]), "dual / dcd-ce": runs([203.0, 205.0, 207.5], 20.0)},
        [0, 1, 2],
    )
    assert "| dual / static-ce |" in table and "202.0 ± 2.0" in table  # sample std
    assert "| 20.0 | 63.0 | config |" in table and "| uniform | uniform | config |" in table
    # differences 3, 3, 3.5: mean 3.17, sd 0.289, half width 4.3027 * 0.289 / sqrt(3) = 0.717
    assert "- dual: dcd-ce − static-ce = +3.2 RSUM (95% CI 2.4…3.9, 3 paired seeds): dcd-ce better" in table


def test_ablation_table_with_one_seed_has_no_verdicts() -> None:
    from ablation import markdown

    row = {key: 30.0 for key in ("image_to_text_R@1", "image_to_text_R@5", "image_to_text_R@10")}
    row |= {key: 30.0 for key in ("text_to_image_R@1", "text_to_image_R@5", "text_to_image_R@10", "rsum")}
    table = markdown(
        {"dual / static-ce": {"chosen": [], "runs": [row]}, "dual / dcd-ce": {"chosen": [], "runs": [row]}},
        [0],
    )
    assert "| dual / dcd-ce |" in table and "95% CI" not in table


def test_ablation_pairs_by_seed_and_names_the_best_dynamic_and_static_rows_by_val() -> None:
    from ablation import markdown

    def runs(rsums: dict[int, float], val: float) -> dict:
        rows = []
        for seed, rsum in rsums.items():
            row = {key: rsum / 6 for key in ("image_to_text_R@1", "image_to_text_R@5", "image_to_text_R@10")}
            row |= {key: rsum / 6 for key in ("text_to_image_R@1", "text_to_image_R@5", "text_to_image_R@10")}
            rows.append(row | {"rsum": rsum, "seed": seed, "val_rsum": val})
        return {"chosen": ["loss.alpha=0.5"], "runs": rows}

    results = {
        "dual / static-ce": runs({0: 200.0, 1: 202.0, 2: 204.0}, val=280.0),
        "dual / static-bce": runs(
            {0: 190.0, 1: 190.0, 2: 190.0}, val=270.0
        ),  # worse on val: not the baseline
        "dual / dcd-ce": runs({0: 201.0, 1: 203.0}, val=279.0),  # 2 seeds: paired on seeds 0 and 1 only
        "dual / weighted-best": runs({0: 210.0, 1: 213.0, 2: 214.0}, val=285.0),  # best dynamic on val
    }
    sweep = [{"student": "dual", "row": "static-ce", "point": "a0.5", "val_rsum": 280.04}]
    table = markdown(results, [0, 1, 2], sweep, head="# title\n\n    python benchmarks/ablation.py\n")
    assert table.startswith("# title") and "| dual | static-ce | a0.5 | 280.0 |" in table
    assert "| dual / dcd-ce (n=2) |" in table
    # dcd-ce − static-ce over seeds 0, 1: differences 1, 1 -> mean 1, std 0, interval 1…1
    assert "dcd-ce − static-ce = +1.0 RSUM (95% CI 1.0…1.0, 2 paired seeds): dcd-ce better" in table
    # weighted-best − static-ce: differences 10, 11, 10 -> mean 10.33, sd 0.577, half width 4.3027*0.577/1.732
    assert (
        "weighted-best − static-ce = +10.3 RSUM (95% CI 8.9…11.8, 3 paired seeds): weighted-best better "
        "(best dynamic − best static, both chosen by mean val RSUM)" in table
    )


def test_ablation_val_sweep_shares_static_alpha_and_builds_stages_on_the_winner(monkeypatch) -> None:
    import argparse

    import ablation

    trained: dict[str, list[str]] = {}
    scores = {"a0.2": 280.0, "a0.5": 290.0, "a0.8": 285.0, "tempered-g0.5": 291.0, "mixed-0.5": 295.0}
    scores |= {"confidence-k4": 289.0, "mixed-0.5_margin_mse": 294.0}

    def fake_train(args, student, name, overrides):
        trained[name] = overrides
        return Path(name)

    monkeypatch.setattr(ablation, "train", fake_train)
    monkeypatch.setattr(ablation, "val_rsum", lambda run: scores[str(run).split("_", 3)[3]])
    args = argparse.Namespace(sweep=True, suffix="", chosen={}, sweep_log=[], report_only=False)
    chosen, winner = ablation.choose_on_val(args, "dual", "weighted-best", ["c=1"])
    # static-ce's alpha 0.5 is taken over; mixed-0.5 wins stage 1 and stays the incumbent against margin-MSE
    assert chosen == ["loss.alpha=0.5", ablation.WEIGHTINGS["mixed-0.5"][0]] and winner.name.endswith(
        "mixed-0.5"
    )
    assert trained["sweep_dual_weighted-best_mixed-0.5_margin_mse"] == [
        "c=1", "loss.name=weighted", "loss.alpha=0.5", ablation.WEIGHTINGS["mixed-0.5"][0],
        "loss.distance=margin_mse", "train.seed=0",
    ]  # fmt: skip
    assert ablation.choose_on_val(args, "dual", "dcd-ce", ["c=1"]) == (["loss.alpha=0.5"], None)
    assert [s["point"] for s in args.sweep_log][-1] == "mixed-0.5 margin_mse"


def test_ablation_dcd_tw_row_is_dcd_ce_with_a_weight_temperature() -> None:
    """The scenes ablation's overrides (configs/scenes_dcd_dual.yaml + the row + its sweep point + the --extra
    settings) build the weighted loss with DCD's weights, CE labels, z-scored KL and T_w = 0.25."""
    import ablation
    from dcd_itr.config import load_config
    from dcd_itr.distill.losses import build_loss
    from dcd_itr.tasks.distill import DistillConfig, _loss_options

    row = ablation.ROWS["dcd-tw"]
    assert row.alpha_from == "static-ce" and list(row.stages[0]) == ["tw0.25", "tw0.5"]
    overrides = [
        *row.overrides,
        "loss.alpha=0.8",
        *row.stages[0]["tw0.25"],
        "loss.options.teacher_norm=zscore",
    ]
    config_path = Path(__file__).resolve().parents[1] / "configs" / "scenes_dcd_dual.yaml"
    config = load_config(config_path, DistillConfig, overrides)
    loss = build_loss(config.loss.name, **_loss_options(config.loss))
    assert (loss.label_weighting, loss.distill_weighting, loss.label) == ("entropy", "paper", "ce")
    assert (loss.weight_temperature, loss.temperature, loss.distance) == (0.25, 1.0, "kl")
    assert (loss.teacher_norm, loss.alpha) == ("zscore", 0.8)
