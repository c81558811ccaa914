"""Time the reuse checks of the first stages (data, preview, features, packaged teacher) of a finished full-size
scenes demo run, on a copy of its stages.json (nothing is recomputed or written into the run).

    python benchmarks/demo_rerun_check.py RUN_ROOT COPY_OF_STAGES_JSON [DATA_DIR]   (RUN_ROOT: results/, cache/)
"""

import shutil
import sys
import time
from pathlib import Path

from dcd_itr.demo.ledger import StageLedger, process_cpu_seconds
from dcd_itr.demo.plan import DemoRun, scenes_plan
from dcd_itr.demo.prepare import data_stage, features_stage, preview_stage
from dcd_itr.demo.training import packaged_teacher_stage

if __name__ == "__main__":
    root = Path(sys.argv[1])
    copy = Path(sys.argv[2])
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "results" / "stages.json", copy)
    started, cpu = time.perf_counter(), process_cpu_seconds()
    run = DemoRun(
        scenes_plan(progress=False),
        StageLedger(copy),
        Path(sys.argv[3]) if len(sys.argv) > 3 else Path("data/scenes"),
        root / "results",
        root / "cache",
        0,
        False,
    )
    data_stage(run)
    preview_stage(run)
    features_stage(run)
    packaged_teacher_stage(run, Path("teachers/scenes_grounded"))
    print(
        f"reuse checks: {time.perf_counter() - started:.1f} s wall, {process_cpu_seconds() - cpu:.1f} CPU s;",
        "reused:",
        [o.name for o in run.ledger.outcomes if o.reused],
    )
