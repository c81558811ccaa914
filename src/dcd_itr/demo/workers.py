"""Independent demo stages side by side: one worker process per core, one torch thread per worker.

On a 2-core machine two single-threaded processes do about twice the work of one; one process with two torch
threads gains far less on the demo's small models (many small ops), and loses badly when the cores are shared
(threads spin waiting for each other). So the feature views are cached one view per worker, and the training
stages that do not depend on each other (the no-teacher baseline and the DCD students) train side by side.

A :class:`Stage` is a ledger stage (:mod:`dcd_itr.demo.ledger`) whose computation is a picklable ``job``: a
module-level function and its arguments. :func:`run_stages` looks every stage up first (reused ones cost
nothing), then runs the rest in a pool of ``workers`` spawned processes, a stage starting once the stage named in
its ``after`` has finished (or was reused) and a worker is free, and records each as it finishes (wall seconds from
submission to result, CPU seconds measured inside its worker). With ``workers == 1`` the jobs run in this process, in order,
with torch's thread setting untouched (the tests' path, and a 1-core machine's).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcd_itr.demo.ledger import Outputs, StageLedger, process_cpu_seconds
from dcd_itr.errors import DcdError

MAX_WORKERS = 2  # the demo's target machine has 2 cores; more workers would only hold more feature copies


def default_workers() -> int:
    """One worker per core, at most :data:`MAX_WORKERS` (1 on a single-core machine: no pool at all)."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


@dataclass
class Stage:
    """A ledger stage computed by ``function(*args)`` (module-level, so it can run in a worker process)."""

    name: str
    inputs: dict[str, Any]
    function: Callable[..., Any]
    args: tuple = ()
    outputs: Outputs = ()
    clear: Sequence[Path] = ()
    check: Callable[[Any], bool] | None = None
    after: str | None = None  # name of a stage in the same call that must finish first (e.g. a shared cache)
    result: Any = field(default=None, init=False)


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _one_thread() -> None:
    """Worker initializer: one torch thread (two workers on two cores, no oversubscription)."""
    import torch

    torch.set_num_threads(1)


def run_job(function: Callable[..., Any], args: tuple) -> tuple[Any, float]:
    """``function(*args)`` in a worker; returns its result and the worker's CPU seconds for it. A DcdError is
    re-raised as a plain DcdError with the same message (subclasses with their own __init__ cannot be unpickled
    by the parent), so the CLI still prints it without a traceback and exits with code 2."""
    cpu = _own_cpu_seconds()
    try:
        result = function(*args)
    except DcdError as error:
        raise DcdError(str(error)) from None
    return result, _own_cpu_seconds() - cpu


def run_stages(ledger: StageLedger, stages: list[Stage], workers: int) -> dict[str, Any]:
    """Reuse or compute every stage (see the module docstring); returns each stage's result by name."""
    todo = []
    for stage in stages:
        found, stage.result = ledger.lookup(stage.name, stage.inputs, stage.outputs, stage.check)
        if not found:
            todo.append(stage)
    if workers <= 1 or len(todo) <= 1:
        for stage in todo:
            ledger.start(stage.name, stage.inputs, stage.clear)
            started, cpu = time.perf_counter(), process_cpu_seconds()
            result = stage.function(*stage.args)
            seconds, cpu = time.perf_counter() - started, process_cpu_seconds() - cpu
            stage.result = ledger.finish(stage.name, stage.inputs, result, stage.outputs, seconds, cpu)
    else:
        _run_in_pool(ledger, todo, workers)
    return {stage.name: stage.result for stage in stages}


def _run_in_pool(ledger: StageLedger, todo: list[Stage], workers: int) -> None:
    pending, done, computed = list(todo), set[str](), {stage.name for stage in todo}

    def ready(
        stage: Stage,
    ) -> bool:  # its ``after`` finished in this call, was reused, or is not a stage here
        return stage.after is None or stage.after not in computed or stage.after in done

    context = multiprocessing.get_context("spawn")  # never fork a process whose torch threads may be running
    with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context, initializer=_one_thread) as pool:
        running: dict[Future, tuple[Stage, float]] = {}
        try:
            while pending or running:
                for stage in [s for s in pending if ready(s)][: max(0, workers - len(running))]:
                    ledger.start(stage.name, stage.inputs, stage.clear)
                    future = pool.submit(run_job, stage.function, stage.args)
                    running[future] = (stage, time.perf_counter())
                    pending.remove(stage)
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    stage, started = running.pop(future)
                    result, cpu = future.result()
                    seconds = time.perf_counter() - started
                    stage.result = ledger.finish(
                        stage.name, stage.inputs, result, stage.outputs, seconds, cpu
                    )
                    done.add(stage.name)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # a running stage still finishes: it resumes later
            raise


def map_jobs(function: Callable[..., Any], arguments: list[tuple], workers: int) -> list[Any]:
    """``[function(*args) for args in arguments]``, in ``workers`` single-threaded processes when > 1 (each job
    starts on the next free worker, in the order given: put the longest first)."""
    if workers <= 1 or len(arguments) <= 1:
        return [function(*args) for args in arguments]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        min(workers, len(arguments)), mp_context=context, initializer=_one_thread
    ) as pool:
        futures = [pool.submit(run_job, function, args) for args in arguments]
        try:
            return [future.result()[0] for future in futures]
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
