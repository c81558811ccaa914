"""What `dcd demo` runs (:class:`DemoPlan`) and what its stages share while it runs (:class:`DemoRun`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dcd_itr.bench.latency import LatencyConfig
from dcd_itr.data.dataset import RetrievalSplit
from dcd_itr.demo.ledger import StageLedger
from dcd_itr.encoders.views import DEFAULT_TEXT_LENGTH

TEACHER_VIEWS = ["efficientnet-lite0@224", "efficientnet-lite1@240", "efficientnet-lite2@260"]
STUDENT_VIEWS = ["efficientnet-lite0@128"]
TEXT_VIEWS = [f"minilm-l6@{DEFAULT_TEXT_LENGTH}"]
DEMO_STORAGE_DTYPE = "float16"  # halves the cache (Lite2 grid tokens dominate); towers still run in float32


def demo_latency() -> LatencyConfig:
    """The speed stage's query-latency part: one 10,000-vector synthetic gallery (the bench's 100K and 1M
    galleries take minutes to build and are `dcd bench`'s job, not the demo's)."""
    return LatencyConfig(sizes=[10_000])


@dataclass
class DemoPlan:
    """What the demo runs. The defaults are the emoji benchmark's; tests swap in tiny configs, towers and data."""

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
    example_queries: int = 5  # text queries on the contact sheet
    example_k: int = 5  # images shown per system and query
    index_backend: str = "faiss-flat"  # exact search: the test split is small
    ablation: Path = Path("benchmarks/results/ablation.md")  # included in the report when it exists
    search_query: str = "a red heart"  # the example printed at the end
    progress: bool = True  # progress bars


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


@dataclass
class TrainedModels:
    """The records of the four training stages: ``best`` folder, ``weights`` sha256, saved ``config``."""

    baseline: dict[str, str]
    teacher: dict[str, str]
    dual: dict[str, str]
    cross: dict[str, str]
