"""One benchmark run: rank the split with every system, project, measure query latency, write the outputs.

>>> payload = run_benchmark(BenchConfig(Path("data/emoji"), teacher=..., cross=..., dual=...))  # doctest: +SKIP

A model that is not given is left out (with the rows and ratios that need it); the cascade needs both students.
"""

from __future__ import annotations

import gc
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig

from dcd_itr.data.loading import load_split
from dcd_itr.data.scene_annotations import split_twin_index
from dcd_itr.errors import ConfigError
from dcd_itr.interfaces import is_cross_encoder
from dcd_itr.models.end_to_end import EndToEnd
from dcd_itr.models.registry import load_model
from dcd_itr.speed import latency as latency_part
from dcd_itr.speed import projection, ranking, tables
from dcd_itr.speed.common import TIMING_ONLY_LABEL, machine_info, thread_count


@dataclass
class BenchConfig:
    data: Path
    split: str = "test"  # the split every RSUM in the README is reported on
    teacher: Path | None = None
    cross: Path | None = None
    dual: Path | None = None
    cascade_ks: list[int] = field(default_factory=lambda: [8, 16, 32])  # the cascade sizes
    out: Path = Path("benchmarks/results")  # where the README's tables are read from
    skip_existing_itr: bool = False  # skip timing ViLT / BLIP (a minute of full-size random-weight models)
    existing_itr: list[str] = field(default_factory=lambda: ["vilt", "blip-itm"])  # the two models
    existing_itr_configs: dict[str, PretrainedConfig] = field(default_factory=dict)  # tests: tiny configs
    existing_itr_captions: int = 16  # one image x 16 captions per timed repeat
    existing_itr_repeats: int = 2  # after a warm-up; a couple is enough for a rate that big a gap hinges on
    latency: latency_part.LatencyConfig | None = field(
        default_factory=latency_part.LatencyConfig
    )  # None: skip
    threads: int | None = None  # None: torch's default (all cores); the same count for every measurement
    device: str = "cpu"  # the CPU is what the README's numbers describe
    command: str = ""  # recorded in the outputs; "" -> this process's command line
    # name -> more dual encoders (e.g. trained without a teacher), ranked like the dual student, after it
    baselines: dict[str, Path] = field(default_factory=dict)
    top_images: int = 0  # > 0: write each caption's top images per system to top_images.json (demo examples)
    progress: bool = False  # progress bars while the cross-encoders and cascades score
    print_report: bool = True  # log speed.md's tables at the end (the demo prints its own summary instead)


def bench_command_line(config: BenchConfig) -> str:
    """The `dcd bench` command line that reruns ``config``'s benchmark, as recorded in its outputs."""
    latency = config.latency
    parts = ["dcd bench"]
    for flag in ("teacher", "cross", "dual", "data", "split", "out"):
        value = getattr(config, flag)
        if value is not None:
            parts.append(f"--{flag} {shlex.quote(str(value))}")
    if latency is not None and latency.hnsw_max_size is not None:
        parts.append(f"--hnsw-max-size {latency.hnsw_max_size}")
    parts += [f"--threads {config.threads}"] if config.threads is not None else []
    parts.append("--cascade-k " + " ".join(map(str, config.cascade_ks)))
    parts.append(" ".join(["--latency-sizes", *map(str, latency.sizes if latency else [])]))
    parts += [f"--baseline {shlex.quote(f'{name}={folder}')}" for name, folder in config.baselines.items()]
    parts += [f"--top-images {config.top_images}"] if config.top_images else []
    return " ".join(parts + (["--skip-existing-itr"] if config.skip_existing_itr else []))


def _load(folder: Path | None, want_cross: bool, role: str) -> torch.nn.Module | None:
    if folder is None:
        return None
    model = load_model(Path(folder))
    if is_cross_encoder(model) != want_cross:
        kind = "a cross-encoder" if want_cross else "a dual encoder"
        raise ConfigError(f"--{role} {folder}: expected {kind}, found {type(model).__name__}")
    return model


def rank_all(config: BenchConfig, log) -> tuple[list[ranking.SystemRun], ranking.EncodedModel | None, Any]:
    """Part 1: every available system ranks the split; returns the runs, the dual's features and the split."""
    split = load_split(config.data, config.split)
    teacher = _load(config.teacher, True, "teacher")
    cross = _load(config.cross, True, "cross")
    dual = _load(config.dual, False, "dual")
    encoder = ranking.SplitEncoder(split, config.device, split_twin_index(config.data, config.split))
    log(f"[ranking] {config.split}: {split.num_images} images x {split.num_captions} captions")
    runs: list[ranking.SystemRun] = []
    encoded: dict[str, ranking.EncodedModel] = {}
    for name, kind, model in (("teacher", "teacher", teacher), ("cross student", "cross", cross)):
        if model is not None:
            encoded[kind] = ranking.encode_model(model, encoder, dual=False)
            runs.append(ranking.rank_cross(name, kind, encoded[kind], encoder, config.progress))
            log(f"  {name}: {runs[-1].total_s:.1f} s, RSUM {runs[-1].rsum:.1f}")
    if dual is not None:
        encoded["dual"] = ranking.encode_model(dual, encoder, dual=True)
        runs.append(ranking.rank_dual_system("dual student", encoded["dual"], encoder))
        log(f"  dual student: {runs[-1].total_s:.1f} s, RSUM {runs[-1].rsum:.1f}")
    if "dual" in encoded and "cross" in encoded:
        for k in config.cascade_ks:
            runs.append(
                ranking.rank_cascade_system(encoded["dual"], encoded["cross"], encoder, k, config.progress)
            )
            log(f"  cascade k={k}: {runs[-1].total_s:.1f} s, RSUM {runs[-1].rsum:.1f}")
    for name, folder in config.baselines.items():  # after the DCD systems: they are the comparison
        baseline = ranking.encode_model(_load(folder, False, "baseline"), encoder, dual=True)
        runs.append(ranking.rank_dual_system(name, baseline, encoder))
        log(f"  {name}: {runs[-1].total_s:.1f} s, RSUM {runs[-1].rsum:.1f}")
    return runs, encoded.get("dual"), split


def project_all(config: BenchConfig, runs: list[ranking.SystemRun], dual_dim: int | None, log) -> dict:
    """Part 2: cost models from the runs (and the random-weight existing models), projected to COCO / Flickr."""
    costs = [projection.cost_from_run(run) for run in runs]
    dual_cost = next((cost for cost, run in zip(costs, runs, strict=True) if run.kind == "dual"), None)
    if dual_cost is not None:
        cascades = [cost for cost in costs if cost.rerank_k]
        costs += [projection.with_cross_features_cached(cost, dual_cost) for cost in cascades]
    details = {}
    if not config.skip_existing_itr:
        for kind in config.existing_itr:
            log(f"[existing ITR] {kind} ({TIMING_ONLY_LABEL})")
            cost, details[kind] = projection.measure_hf_cost(
                kind,
                config.existing_itr_configs.get(kind),
                config.existing_itr_captions,
                config.existing_itr_repeats,
            )
            costs.append(cost)
            gc.collect()  # free the full-size model before the next one is built
    dual_ranking = {}
    if dual_dim is not None:
        for bench, (n, m) in projection.RANKING_BENCHMARKS.items():
            dual_ranking[bench] = projection.dual_ranking_seconds(n, m, dual_dim)
            log(f"  dual grid ranking of {bench} ({n} x {m}, {dual_dim}-d): {dual_ranking[bench]:.2f} s")
    return {
        "projection": projection.project(costs, dual_ranking),
        "dual_grid_ranking_s": dual_ranking,
        "existing_itr": details,
        "existing_itr_pairs_timed": config.existing_itr_captions * config.existing_itr_repeats,
    }


def run_benchmark(config: BenchConfig, log=print) -> dict[str, Any]:
    """Run all four parts and write ``speed.json``, ``speed.md`` and ``speed_plot.png`` under ``config.out``."""
    with thread_count(config.threads) as threads:
        return _run(config, threads, log)


def _run(config: BenchConfig, threads: int, log) -> dict[str, Any]:
    machine = machine_info(threads)
    with torch.inference_mode():
        runs, dual, split = rank_all(config, log)
        if not runs:
            raise ConfigError("dcd bench needs at least one of --teacher, --cross, --dual")
        teacher = next((run for run in runs if run.kind == "teacher"), None)
        dual_dim = int(dual.images["embedding"].shape[1]) if dual is not None else None
        payload: dict[str, Any] = {
            "machine": machine,
            "machine_short": f"{machine['cpu_count']} CPU cores, {threads} thread{'s' if threads > 1 else ''}",
            "command": config.command or " ".join(shlex.quote(arg) for arg in sys.argv),
            "models": {"teacher": config.teacher, "cross": config.cross, "dual": config.dual},
            "split": {
                "data": Path(config.data).name,
                "name": split.name,
                "num_images": split.num_images,
                "num_captions": split.num_captions,
            },
            "ranking": [run.as_dict(teacher) for run in runs],
        }
        payload |= project_all(config, runs, dual_dim, log)
        payload["latency"] = None
        if config.latency is not None and dual is not None:
            log("[latency] one text query at a time (synthetic galleries)")
            end_to_end = EndToEnd(dual.model, config.device)
            payload["latency"] = latency_part.run_latency(
                lambda text: end_to_end.encode_texts([text])["embedding"],
                list(split.captions),
                dual.images["embedding"].float().numpy(),
                dual.texts["embedding"].float().numpy(),
                config.latency,
                log,
            )
    payload["models"] = {key: str(value) if value else None for key, value in payload["models"].items()}
    payload["models"] |= {name: str(folder) for name, folder in config.baselines.items()}
    payload["machine"]["load_average_at_end"] = machine_info(threads)["load_average_1_5_15"]
    payload["targets"] = tables.targets(payload)
    paths = tables.write_outputs(payload, Path(config.out))
    if config.top_images > 0:
        paths["top_images"] = tables.write_top_images(
            runs, payload["split"], config.top_images, Path(config.out)
        )
    if config.print_report:
        log(tables.markdown(payload))
    log("written: " + ", ".join(str(path) for path in paths.values()))
    return payload
