"""What `dcd demo` runs (:class:`DemoPlan`) and what its stages share while it runs (:class:`DemoRun`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.demo.ledger import StageLedger
from dcd_itr.demo.workers import default_workers
from dcd_itr.encoders.views import DEFAULT_TEXT_LENGTH
from dcd_itr.errors import ConfigError
from dcd_itr.speed.latency import LatencyConfig

TEACHER_VIEWS = ["efficientnet-lite0@224", "efficientnet-lite1@240", "efficientnet-lite2@260"]
STUDENT_VIEWS = ["efficientnet-lite0@128"]
TEXT_VIEWS = [f"minilm-l6@{DEFAULT_TEXT_LENGTH}"]
SCENES_STUDENT_VIEW = (
    "efficientnet-lite0@128"  # the cheap view: the whole scene at low resolution, no detector
)
SCENES_REGION_VIEW = "regions-efficientnet-lite0@96"  # the teacher's view: each detected object's crop + box
PACKAGED_TEACHER = Path(
    "teachers/scenes_grounded"
)  # the shipped grounded teacher (safetensors + manifest.json)
BENCHMARKS = ("scenes", "emoji")
DEMO_STORAGE_DTYPE = "float16"  # halves the cache (Lite2 grid tokens dominate); towers still run in float32


def demo_latency() -> LatencyConfig:
    """The speed stage's query-latency part: one 10,000-vector synthetic gallery (the bench's 100K and 1M
    galleries take minutes to build and are `dcd bench`'s job, not the demo's)."""
    return LatencyConfig(sizes=[10_000])


@dataclass
class DemoPlan:
    """What the demo runs. The defaults are the emoji benchmark's (:func:`scenes_plan` is the showcase's);
    tests swap in tiny configs, towers and data."""

    benchmark: str = "emoji"  # "emoji" (the embedded single-emoji benchmark) or "scenes" (relations, twins)
    configs: Path = Path("configs")  # folder of the four training configs below
    baseline_config: str = "emoji_dual_lite0_128.yaml"
    teacher_config: str = "emoji_teacher.yaml"
    dual_config: str = "emoji_dcd_dual.yaml"
    cross_config: str = "emoji_dcd_cross.yaml"
    image_views: list[str] = field(default_factory=lambda: STUDENT_VIEWS + TEACHER_VIEWS)
    text_views: list[str] = field(default_factory=lambda: list(TEXT_VIEWS))
    storage_dtype: str = DEMO_STORAGE_DTYPE
    # an existing dataset (file or folder) instead of building the emoji benchmark into --data-dir
    dataset: Path | None = None
    cascade_ks: list[int] = field(default_factory=lambda: [8, 16, 32])  # the cascade sizes
    latency: LatencyConfig | None = field(default_factory=demo_latency)  # None: no latency part
    threads: int | None = None  # None: torch's default, all cores
    # worker processes (one torch thread each) for the feature views and the independent training stages;
    # None: one per core, at most 2 (dcd_itr.demo.workers); 1: everything in this process
    workers: int | None = None
    example_queries: int = 5  # text queries on the contact sheet
    example_k: int = 5  # images shown per system and query
    index_backend: str = "faiss-flat"  # exact search: the test split is small
    ablation: Path = Path("benchmarks/results/ablation.md")  # included in the report when it exists
    search_query: str | None = "a red heart"  # the example printed at the end; None: the first example query
    progress: bool = True  # progress bars
    # scenes only: dcd_itr.data.scenes.build_scenes_dataset options (sizes, cldr_dir); {} -> the defaults
    scenes_options: dict[str, Any] = field(default_factory=dict)
    # a teacher shipped with the repo (folder with manifest.json), used instead of training one; None: train
    packaged_teacher: Path | None = None
    retrain_teacher: bool = False  # train the teacher with teacher_config even when a packaged one exists

    @property
    def has_twins(self) -> bool:
        return self.benchmark == "scenes"


def scenes_plan(**changes: Any) -> DemoPlan:
    """The showcase: the emoji-scenes relation benchmark with the grounded region teacher (shipped in
    :data:`PACKAGED_TEACHER`), the position-aware dual trained without a teacher, the DCD dual student on the cheap
    view, the compressed cross student cut from the teacher, and the cascade."""
    settings: dict[str, Any] = {
        "benchmark": "scenes",
        "baseline_config": "scenes_dual_pos.yaml",  # the DCD dual student's architecture, InfoNCE, no teacher
        "teacher_config": "scenes_teacher.yaml",
        "dual_config": "scenes_dcd_dual.yaml",
        "cross_config": "scenes_dcd_cross.yaml",
        "image_views": [SCENES_STUDENT_VIEW, SCENES_REGION_VIEW],
        "text_views": list(TEXT_VIEWS),
        "storage_dtype": "float32",  # small views (Lite0 @ 128 grid, 4-6 region vectors): no need to halve
        "ablation": Path("benchmarks/results/scenes_ablation.md"),
        "search_query": None,  # a relation caption of the test split (a scene that exists)
        "packaged_teacher": PACKAGED_TEACHER,
    }
    return DemoPlan(**(settings | changes))


def plan_for(benchmark: str, **changes: Any) -> DemoPlan:
    """The plan of ``benchmark`` ("scenes" or "emoji") with ``changes`` applied."""
    if benchmark == "scenes":
        return scenes_plan(**changes)
    if benchmark == "emoji":
        return DemoPlan(**changes)
    raise ConfigError(f"--benchmark must be one of {', '.join(BENCHMARKS)}, got {benchmark!r}")


@dataclass
class DemoRun:
    """What the stages share: the plan, the ledger, the folders, and what the data stage found."""

    plan: DemoPlan
    ledger: StageLedger
    data_dir: Path
    results_dir: Path
    cache_dir: Path
    seed: int
    fresh: bool
    data_arg: Path = Path()  # the dataset as the training configs and `dcd bench` take it
    data_fingerprint: str = ""  # sha256 of the dataset file
    splits: dict[str, RetrievalSplit] = field(default_factory=dict)

    @property
    def workers(self) -> int:
        return self.plan.workers or default_workers()


@dataclass
class TrainedModels:
    """The records of the four training stages: ``best`` folder, ``weights`` sha256, saved ``config``; the
    teacher's may also name ``paths_only`` (its fusion term removed: the interaction gain's reference)."""

    baseline: dict[str, str]
    teacher: dict[str, str]
    dual: dict[str, str]
    cross: dict[str, str]
