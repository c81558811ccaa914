"""What the DCD benchmarks share: one distillation run on the emoji benchmark from the committed config
(configs/emoji_dcd_<student>.yaml), with the paths and the settings a benchmark varies given as overrides."""

from __future__ import annotations

from pathlib import Path

from dcd_itr.config import load_config
from dcd_itr.tasks.distill import DistillConfig, distill


def distill_emoji(
    student: str,
    data: Path,
    features: Path,
    teacher: Path,
    teacher_cache: Path,
    out: Path,
    *overrides: str,
    config_path: Path | None = None,
) -> Path:
    """Train ``student`` ("dual" or "cross") into ``out`` (a finished run resumes to its end); returns ``out``.
    ``config_path``: another committed config to start from (e.g. configs/scenes_dcd_dual.yaml)."""
    config = load_config(
        config_path or Path("configs") / f"emoji_dcd_{student}.yaml",
        DistillConfig,
        [
            f"data={data}",
            f"features={features}",
            f"teacher={teacher}",
            f"teacher_cache={teacher_cache}",
            f"out={out}",
            *overrides,
        ],
    )
    distill(config, progress=False)
    return out
