"""`dcd eval`: full-ranking Recall@K of trained models (dual, cross-encoder), plug-in cross-encoders (``vilt:ID``,
``bridgetower:ID``, ``blip-itm:ID``, ``python:MODULE:NAME``; see :mod:`dcd_itr.models.plugins`) and dual -> cross
cascades."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dcd_itr.config import parse_key_values
from dcd_itr.errors import ConfigError
from dcd_itr.evaluate import evaluate_cascade, evaluate_cross_encoder, evaluate_model
from dcd_itr.io_utils import write_json_atomic
from dcd_itr.metrics import format_metrics_table
from dcd_itr.twins import format_twin_table


def run_eval(
    models: list[Path],
    data: Path,
    features: Path | None,
    split: str = "test",
    cascade: str | None = None,
    cascade_k: list[int] | None = None,
    out: Path | None = None,
    scores_dir: Path | None = None,
    progress: bool = True,
    cross_encoders: list[str] | None = None,
    device: str = "cpu",
    options: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    if (models or cascade) and features is None:
        raise ConfigError("--model and --cascade read the feature cache: give --features")
    if not (models or cascade or cross_encoders):
        raise ConfigError("nothing to evaluate: give --model, --cross-encoder or --cascade")
    rows: dict[str, dict[str, Any]] = {}
    for folder in models:
        rows[str(folder)] = evaluate_model(folder, data, features, split, scores_dir, progress)
    for spec in cross_encoders or []:
        rows[spec] = evaluate_cross_encoder(
            spec, data, features, split, scores_dir, progress, device, options
        )
    if cascade:
        if ":" not in cascade:
            raise ConfigError(f"--cascade {cascade!r}: expected DUAL_DIR:CROSS_DIR")
        dual_dir, cross_dir = (Path(p) for p in cascade.split(":", 1))
        for k in cascade_k or [16]:
            rows[f"cascade k={k}"] = evaluate_cascade(dual_dir, cross_dir, data, features, split, k, progress)
    print(format_metrics_table(rows))
    if twin_table := format_twin_table(rows):
        print(twin_table)
    if out:
        write_json_atomic(out, rows)
        print(f"metrics written to {out}")
    return rows


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="Recall@1/5/10 both directions, RSUM and median rank of trained models and cascades",
        description="Full ranking of a split: image->text (a hit if any of the image's captions is in the top K) "
        "and text->image. Dual encoders rank blockwise in bounded memory; cross-encoders (saved folders on cached "
        "features, or --cross-encoder plug-ins on raw images and captions) score every pair (resumable with "
        "--scores-dir); a cascade re-scores the dual's top k with the cross-encoder. Ties: lower index first. "
        "On a dataset with swapped twins (dcd data scenes) every row also gets the twin text / image / group "
        "scores (Winoground-style, ties fail; chance 25 / 25 / 16.7).",
    )
    parser.add_argument("--model", type=Path, action="append", default=[], help="model folder, repeatable")
    parser.add_argument(
        "--cross-encoder",
        action="append",
        default=[],
        metavar="SPEC",
        help="a cross-encoder ranked on raw images and captions, repeatable: vilt:PATH_OR_HUB_ID, "
        "bridgetower:PATH_OR_HUB_ID, blip-itm:PATH_OR_HUB_ID, python:MODULE:NAME or python:FILE.py:NAME",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="loader option for every --cross-encoder plug-in, repeatable (e.g. dtype=bfloat16, pair_batch_size=64)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where --cross-encoder plug-ins run: cpu, cuda or auto (default %(default)s)",
    )
    parser.add_argument("--data", type=Path, required=True, help="dataset file or folder")
    parser.add_argument(
        "--features", type=Path, help="feature cache folder (dcd features); needed by --model and --cascade"
    )
    parser.add_argument("--split", default="test", help="split to rank (default %(default)s)")
    parser.add_argument("--cascade", help="DUAL_DIR:CROSS_DIR: also evaluate the dual -> cross cascade")
    parser.add_argument("--k", type=int, action="append", help="cascade k, repeatable (default 16)")
    parser.add_argument("--out", type=Path, help="write all metrics as JSON here")
    parser.add_argument("--scores-dir", type=Path, help="checkpoint cross-encoder scores here (resumable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(
        handler=lambda a: run_eval(
            a.model,
            a.data,
            a.features,
            a.split,
            a.cascade,
            a.k,
            a.out,
            a.scores_dir,
            not a.quiet,
            a.cross_encoder,
            a.device,
            parse_key_values(a.option, "--option"),
        )
    )
