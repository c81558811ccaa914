"""Tests for `dcd bench`: projection arithmetic against hand-computed values, a full run on tiny offline models
(RSUM equal to `dcd eval`'s, timings positive, ratios equal to the measured times' ratios), the latency part, and
the outputs. No timing is asserted beyond positivity and consistency."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import BlipConfig, ViltConfig

from dcd_itr.bench import projection
from dcd_itr.bench.latency import (
    LatencyConfig,
    recall_at_k,
    run_latency,
    setting_label,
    synthetic_gallery,
)
from dcd_itr.bench.projection import CostModel, cost_from_run, dual_ranking_seconds, project
from dcd_itr.bench.ranking import SystemRun
from dcd_itr.bench.report import best_setting
from dcd_itr.bench.runner import BenchConfig, run_benchmark
from dcd_itr.cli import main
from dcd_itr.commands.eval import run_eval
from dcd_itr.features import cache_features
from dcd_itr.models.fusion import cut_student
from dcd_itr.models.registry import load_model
from search_fixtures import _save, tiny_setup

TINY = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 37, "num_hidden_layers": 2}
TINY_ITR = {
    "vilt": ViltConfig(**TINY, image_size=32, patch_size=16, max_position_embeddings=40, vocab_size=40),
    "blip-itm": BlipConfig(
        text_config={**TINY, "vocab_size": 40, "max_position_embeddings": 64, "encoder_hidden_size": 32},
        vision_config={**TINY, "image_size": 32, "patch_size": 16},
        image_text_hidden_size=16,
        projection_dim=16,
    ),
}
GRID_SECONDS = {5_000: 2.0, 1_000: 0.1}  # stand-in dual grid times in the tiny run, by benchmark image count
SMALL_LATENCY = LatencyConfig(
    sizes=[400],
    num_queries=12,
    hnsw={"m": 8, "ef_construction": 40},
    hnsw_ef_search=[16, 64],
    ivfflat={"train_size": 400},
    ivfflat_nprobe=[2, 64],
    ivfpq={"m": 2, "train_size": 400},
    ivfpq_nprobe=[4],
)


# ----------------------------------------------------------------------------- projection arithmetic


def test_cross_encoder_projection_is_encoding_plus_every_pair():
    cost = CostModel("teacher", image_s=0.01, text_s=0.002, pair_s=0.001)
    # 5000 * 0.01 + 25010 * 0.002 + 5000 * 25010 * 0.001
    assert cost.seconds(5_000, 25_010) == pytest.approx(50 + 50.02 + 125_050)


def test_dual_projection_adds_its_timed_grid_and_no_pairs():
    cost = CostModel("dual student", image_s=0.01, text_s=0.002, first_stage=True)
    assert cost.seconds(1_000, 5_000, first_stage_s=3.0) == pytest.approx(10 + 10 + 3)
    assert CostModel("cross", 0.01, 0.002, pair_s=0.1).seconds(1, 1, first_stage_s=99.0) == pytest.approx(
        0.112
    )


def test_cascade_projection_adds_k_pairs_per_query_capped_by_candidates():
    cost = CostModel("cascade k=16", 0.01, 0.002, first_stage=True, rerank_k=16, rerank_s=0.0005)
    # (1000 + 5000) queries x 16 candidates x 0.5 ms, on top of the dual's 10 + 10 + 3 s
    assert cost.seconds(1_000, 5_000, first_stage_s=3.0) == pytest.approx(23 + 48)
    capped = CostModel("cascade k=50", 0.0, 0.0, rerank_k=50, rerank_s=1.0)
    assert capped.seconds(10, 20) == 10 * 20 + 20 * 10  # k capped at 20 captions and at 10 images


def test_cost_from_run_divides_measured_times_by_items_and_pairs():
    cross = SystemRun("teacher", "teacher", 10, 50, 2.0, 0.5, 25.0, 500, {"rsum": 300.0})
    cost = cost_from_run(cross)
    assert (cost.image_s, cost.text_s, cost.pair_s) == pytest.approx((0.2, 0.01, 0.05))
    cascade = SystemRun("cascade k=4", "cascade", 10, 50, 1.0, 0.5, 2.4, 240, {"rsum": 290.0}, cascade_k=4)
    cost = cost_from_run(cascade)
    assert (cost.rerank_k, cost.rerank_s, cost.first_stage, cost.pair_s) == (
        4,
        pytest.approx(0.01),
        True,
        0.0,
    )


def test_project_reports_speedups_as_ratios_of_projected_times():
    costs = [
        CostModel("teacher", 0.0, 0.0, pair_s=1e-3),
        CostModel("dual student", 1e-3, 1e-3, first_stage=True),
        CostModel("ViLT-B/32 (random weights, timing only)", 0.0, 0.0, pair_s=0.25, timing_only=True),
    ]
    rows = project(costs, {"COCO-5K": 2.0, "Flickr30K-1K": 0.1})
    teacher, dual, vilt = rows
    assert teacher["seconds"]["COCO-5K"] == pytest.approx(5_000 * 25_010 * 1e-3)
    assert dual["seconds"]["COCO-5K"] == pytest.approx(5 + 25.01 + 2.0)
    assert dual["seconds"]["Flickr30K-1K"] == pytest.approx(1 + 5 + 0.1)
    expected = teacher["seconds"]["COCO-5K"] / dual["seconds"]["COCO-5K"]
    assert dual["speedup_over_teacher"]["COCO-5K"] == pytest.approx(expected)
    assert dual["speedup_over_vilt"]["COCO-5K"] == pytest.approx(250 * teacher["seconds"]["COCO-5K"] / 32.01)
    assert vilt["pairs_per_s"] == pytest.approx(4.0) and vilt["timing_only"]


def test_dual_ranking_seconds_times_a_real_grid():
    assert 0 < dual_ranking_seconds(50, 120, dim=8) < 60


# ----------------------------------------------------------------------------- latency


def test_best_setting_is_the_fastest_that_reaches_the_recall_target():
    rows = [
        {"recall_at_k": 0.90, "search_p50_ms": 0.5},
        {"recall_at_k": 0.96, "search_p50_ms": 2.0},
        {"recall_at_k": 0.99, "search_p50_ms": 5.0},
    ]
    assert best_setting(rows) is rows[1]
    assert best_setting(rows[:1]) is rows[0]  # none reaches it: the highest recall


def test_recall_at_k_counts_shared_ids():
    assert recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[2, 1], [3, 5]])) == pytest.approx(0.75)


def test_synthetic_gallery_is_unit_norm_and_reproducible():
    centres = np.eye(4, 8, dtype=np.float32)
    gallery = synthetic_gallery(250, centres, 0.75, seed=3)
    np.testing.assert_allclose(np.linalg.norm(gallery, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(gallery, synthetic_gallery(250, centres, 0.75, seed=3))


def test_latency_exact_search_has_recall_one_and_reports_every_backend():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((30, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    result = run_latency(
        lambda text: None, [f"q{i}" for i in range(30)], vectors, vectors, SMALL_LATENCY, log=str
    )
    rows = {(row["backend"], setting_label(row)): row for row in result["rows"]}
    assert set(rows) == {
        ("faiss-flat", "exact"),
        ("faiss-hnsw", "efSearch=16"),
        ("faiss-hnsw", "efSearch=64"),
        ("faiss-ivfflat", "nprobe=2"),
        ("faiss-ivfflat", "nprobe=64"),
        ("faiss-ivfpq", "nprobe=4"),
    }
    assert result["synthetic_gallery"]
    hnsw = [rows["faiss-hnsw", "efSearch=16"], rows["faiss-hnsw", "efSearch=64"]]
    assert hnsw[0]["build_s"] == hnsw[1]["build_s"]  # one build, two search settings
    assert rows["faiss-ivfflat", "nprobe=64"]["recall_at_k"] == 1.0  # every one of its 10 lists: exact
    rows = {backend: row for (backend, _), row in rows.items()}
    assert rows["faiss-flat"]["recall_at_k"] == 1.0
    assert rows["faiss-flat"]["bytes_per_vector"] >= 4 * 16  # float32 vectors at least
    assert rows["faiss-ivfpq"]["bytes_per_vector"] < rows["faiss-flat"]["bytes_per_vector"]
    for row in rows.values():
        assert 0.0 <= row["recall_at_k"] <= 1.0 and row["build_s"] >= 0
        assert 0 < row["search_p50_ms"] <= row["search_p99_ms"]
        assert row["total_p50_ms"] > 0 and row["total_p99_ms"] >= row["total_p50_ms"]


# ----------------------------------------------------------------------------- full run on tiny models


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Teacher = the tiny 2-layer fusion model, cross student = its 1-layer cut, and the tiny dual."""
    setup = tiny_setup(tmp_path_factory)
    student = cut_student(load_model(setup.cross))
    cross = _save(student.eval(), tmp_path_factory.mktemp("bench") / "cross_student")
    return setup, setup.cross, cross


@pytest.fixture(scope="module")
def bench_run(tiny_models, tmp_path_factory):
    setup, teacher, cross = tiny_models
    out = tmp_path_factory.mktemp("bench_out")
    config = BenchConfig(
        setup.data,
        teacher=teacher,
        cross=cross,
        dual=setup.dual,
        cascade_ks=[2, 4],
        out=out,
        existing_itr_configs=TINY_ITR,
        existing_itr_captions=4,
        existing_itr_repeats=1,
        latency=SMALL_LATENCY,
        threads=1,
        command="dcd bench (test)",
    )
    with (
        pytest.MonkeyPatch.context() as patch
    ):  # the real COCO-size grid takes seconds; tested on its own below
        patch.setattr(projection, "dual_ranking_seconds", lambda n, m, dim: GRID_SECONDS[n])
        return run_benchmark(config, log=str), out


def test_rsum_equals_dcd_eval_for_the_same_models(bench_run, tiny_models, tmp_path_factory, capsys):
    (payload, _), (setup, teacher, cross) = bench_run, tiny_models
    features = tmp_path_factory.mktemp("bench_features")
    views = load_model(setup.cross).image_views, load_model(setup.cross).text_views
    cache_features(setup.data, features, views[0], views[1], splits=("test",), progress=False)
    evaluated = run_eval(
        [teacher, cross, setup.dual], setup.data, features, cascade=f"{setup.dual}:{cross}", cascade_k=[2, 4]
    )
    capsys.readouterr()
    rows = {row["name"]: row for row in payload["ranking"]}
    expected = {
        "teacher": evaluated[str(teacher)],
        "cross student": evaluated[str(cross)],
        "dual student": evaluated[str(setup.dual)],
        "cascade k=2": evaluated["cascade k=2"],
        "cascade k=4": evaluated["cascade k=4"],
    }
    for name, metrics in expected.items():
        assert rows[name]["rsum"] == pytest.approx(metrics["rsum"], abs=1e-9), name
        assert rows[name]["metrics"]["image_to_text_R@1"] == pytest.approx(metrics["image_to_text_R@1"])


def test_timings_are_positive_and_ratios_match_the_measured_times(bench_run):
    payload, _ = bench_run
    rows = {row["name"]: row for row in payload["ranking"]}
    teacher = rows["teacher"]
    num_images, num_captions = teacher["num_images"], teacher["num_captions"]
    assert (num_images, num_captions) == (11, 22)
    for row in rows.values():
        assert row["image_encoding_s"] > 0 and row["text_encoding_s"] > 0 and row["scoring_s"] > 0
        parts = row["image_encoding_s"] + row["text_encoding_s"] + row["scoring_s"]
        assert row["total_s"] == pytest.approx(parts)
        assert row["speedup_over_teacher"] == pytest.approx(teacher["total_s"] / row["total_s"])
        assert row["rsum_pct_of_teacher"] == pytest.approx(100 * row["rsum"] / teacher["rsum"])
        assert row["pairs_per_s"] == pytest.approx(row["pairs_scored"] / row["scoring_s"])
    assert teacher["pairs_scored"] == rows["dual student"]["pairs_scored"] == 11 * 22
    for k in (2, 4):
        assert rows[f"cascade k={k}"]["pairs_scored"] == (num_images + num_captions) * k
        # the cascade runs both students' encoders: at least the costlier of the two
        assert rows[f"cascade k={k}"]["image_encoding_s"] >= rows["dual student"]["image_encoding_s"]


def test_projection_rows_cover_every_system_and_label_random_weights(bench_run):
    payload, _ = bench_run
    names = [row["name"] for row in payload["projection"]]
    assert names[:5] == ["teacher", "cross student", "dual student", "cascade k=2", "cascade k=4"]
    assert names[5:7] == ["cascade k=2, cross features cached", "cascade k=4, cross features cached"]
    rows = {row["name"]: row for row in payload["projection"]}
    cached, dual = rows["cascade k=2, cross features cached"], rows["dual student"]
    assert (cached["image_s"], cached["text_s"]) == (dual["image_s"], dual["text_s"])
    rerank = (5_000 + 25_010) * 2 * rows["cascade k=2"]["rerank_s"]
    assert cached["seconds"]["COCO-5K"] == pytest.approx(dual["seconds"]["COCO-5K"] + rerank)
    existing = [row for row in payload["projection"] if row["timing_only"]]
    assert len(existing) == 2 and all("timing only" in row["name"] for row in existing)
    assert all(details["timing_only"] for details in payload["existing_itr"].values())
    for row in payload["projection"]:
        teacher_coco = payload["projection"][0]["seconds"]["COCO-5K"]
        assert row["seconds"]["COCO-5K"] > row["seconds"]["Flickr30K-1K"] > 0
        assert row["speedup_over_teacher"]["COCO-5K"] == pytest.approx(
            teacher_coco / row["seconds"]["COCO-5K"]
        )
    assert payload["dual_grid_ranking_s"] == {"COCO-5K": 2.0, "Flickr30K-1K": 0.1}
    dual = next(row for row in payload["projection"] if row["name"] == "dual student")
    expected = 5_000 * dual["image_s"] + 25_010 * dual["text_s"] + 2.0
    assert dual["seconds"]["COCO-5K"] == pytest.approx(expected)


def test_outputs_are_written_with_machine_and_labels(bench_run):
    payload, out = bench_run
    saved = json.loads((out / "speed.json").read_text())
    assert saved["ranking"] == json.loads(json.dumps(payload["ranking"]))
    assert saved["machine"]["torch_threads"] == 1 and saved["machine"]["cpu_count"] >= 1
    markdown = (out / "speed.md").read_text()
    assert "timing only" in markdown and "SYNTHETIC" in markdown and "Machine:" in markdown
    assert markdown.count("| teacher |") == 2  # the ranking and the projection tables
    assert (out / "speed_plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert payload["latency"]["rows"][0]["recall_at_k"] == 1.0  # exact search against itself


def test_cli_runs_without_existing_models_or_latency(tiny_models, tmp_path, capsys):
    setup, _, cross = tiny_models
    args = ["bench", "--cross", str(cross), "--dual", str(setup.dual), "--data", str(setup.data)]
    args += [
        "--cascade-k",
        "3",
        "--out",
        str(tmp_path),
        "--skip-existing-itr",
        "--latency-sizes",
        "--threads",
        "1",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(projection, "dual_ranking_seconds", lambda n, m, dim: GRID_SECONDS[n])
        assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| cascade k=3 |" in printed and "n/a" in printed  # no teacher: no speed-up over it
    payload = json.loads((tmp_path / "speed.json").read_text())
    assert payload["latency"] is None and payload["existing_itr"] == {}
    assert payload["command"].startswith(f"dcd bench --cross {cross} --dual {setup.dual} --data {setup.data}")
    assert payload["command"].endswith("--cascade-k 3 --latency-sizes --skip-existing-itr")
    assert [row["name"] for row in payload["ranking"]] == ["cross student", "dual student", "cascade k=3"]


def test_cli_refuses_a_dual_given_as_teacher(tiny_models, tmp_path, capsys):
    setup, _, _ = tiny_models
    args = ["bench", "--teacher", str(setup.dual), "--data", str(setup.data), "--out", str(tmp_path)]
    assert main([*args, "--skip-existing-itr", "--latency-sizes"]) == 2
    assert "expected a cross-encoder" in capsys.readouterr().err
