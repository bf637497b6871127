"""Run a sweep's points as independent jobs and stream their rows into the table.

Three ways to run them, one loop around them: in this process (``jobs=1``), a local
pool of worker processes (``jobs=N``, forked where the platform allows, so a worker
starts with everything imported), or a Ray cluster (``ray=ADDRESS``, or ``ray="local"``
to start one here with ``ray.init()``). Each finished point's rows go into the table at
once (the table is rewritten atomically at most once per ``flush_s`` and at the end), so
a sweep killed at any moment keeps every point written so far and ``resume`` runs only
the rest."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from macssim._threads import one_torch_thread
from macssim.sweep._axes import SweepError
from macssim.sweep._point import run_point, worker_init
from macssim.sweep._spec import Point, SweepSpec
from macssim.sweep._table import ResultsTable

__all__ = ["SweepOutcome", "run_sweep"]


@dataclass(frozen=True)
class SweepOutcome:
    path: Path
    points: int
    """Points in the sweep."""
    ran: int
    """Points run this time."""
    skipped: int
    """Points already finished in the table (``resume``)."""
    failed: int
    """Points of this run that ended with an error (recorded in the table)."""
    elapsed_s: float


Progress = Callable[[int, int, int], None]
"""``progress(done, total, failed)`` after each point of this run."""


def run_sweep(spec: SweepSpec, out: str | Path, *, jobs: int = 1, ray: str | None = None,
              resume: bool = False, force: bool = False, progress: Progress | None = None,
              flush_s: float = 1.0) -> SweepOutcome:
    """Run every point of ``spec`` not already finished in ``out`` and write the table.

    Args:
        jobs: worker processes (1: in this process); with ``ray``, tasks in flight.
        ray: None for local processes; ``"local"`` starts a Ray instance here; any other
            text is the address of a running cluster (``ray.init(address=...)``).
        resume: continue the table at ``out`` (points finished there are skipped).
        force: replace a sweep table at ``out`` (never any other file).
        flush_s: rewrite the table at most this often (and always at the end).
    Raises:
        SweepError for a table that may not be written, a worker pool that broke, or Ray
        missing; the table holds every point finished before it.
    """
    if not isinstance(jobs, int) or isinstance(jobs, bool) or not 1 <= jobs <= 1024:
        raise SweepError(f'sweep: "jobs" must be an integer from 1 to 1024, got {jobs!r}')
    table = ResultsTable.open(out, resume=resume, force=force)
    points = spec.points()
    order = {p.point_id: p.index for p in points}
    done = table.done_ids()
    todo = [p for p in points if p.point_id not in done]
    start = time.monotonic()
    failed = 0
    finished = 0
    last_flush = start
    if not todo:
        table.write(order)  # canonical order (and a first table for a new empty file)
        return SweepOutcome(table.path, len(points), 0, len(points), 0, 0.0)
    if ray is not None:
        results = _on_ray(todo, ray, jobs)
    elif jobs == 1:
        results = _in_process(todo)
    else:
        results = _in_pool(todo, jobs)
    try:
        for point, rows in results:
            table.replace_point(point.point_id, rows)
            finished += 1
            failed += rows[0]["status"] != "ok"
            now = time.monotonic()
            if now - last_flush >= flush_s:
                table.write(order)
                last_flush = now
            if progress is not None:
                progress(finished, len(todo), failed)
    finally:
        results.close()  # stop the workers (cancelling what has not started)
        table.write(order)
    return SweepOutcome(table.path, len(points), finished, len(points) - len(todo), failed,
                        time.monotonic() - start)


Results = Iterator[tuple[Point, list[dict[str, Any]]]]


def _in_process(todo: list[Point]) -> Results:
    with one_torch_thread():  # as each pool worker has
        for p in todo:
            yield p, run_point(p.to_dict())


def _in_pool(todo: list[Point], jobs: int) -> Results:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    method = _start_method()
    if method == "fork":  # what every point imports, once here rather than per worker
        import macssim.replay  # noqa: F401
        import macssim.report  # noqa: F401
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(todo)),
                               mp_context=multiprocessing.get_context(method),
                               initializer=worker_init)
    complete = False
    try:
        pending = {pool.submit(run_point, p.to_dict()): p for p in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(finished, key=lambda f: pending[f].index):
                point = pending.pop(fut)
                try:
                    rows = fut.result()
                except BrokenProcessPool as e:
                    raise SweepError("sweep: a worker process died (out of memory, or "
                                     "killed); the points finished so far are in the table "
                                     "and --resume runs the rest") from e
                yield point, rows
        complete = True
    finally:
        if complete:
            pool.shutdown(wait=True)
        else:  # interrupted: stop the workers we started rather than wait for their points
            workers = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in workers:
                proc.terminate()
            for proc in workers:
                proc.join(timeout=10)


def _start_method() -> str:
    """``fork`` where the platform has it: a worker starts with macssim, torch and numba
    already imported (an import is ~4 s of CPU, a whole point's worth on a short sweep).
    Safe here because the sweep's own process runs no torch op before the pool starts and
    each worker runs torch on one thread. ``MACSSIM_SWEEP_START=spawn`` (or
    ``forkserver``) overrides it; elsewhere ``spawn``."""
    import multiprocessing
    import os

    wanted = os.environ.get("MACSSIM_SWEEP_START")
    methods = multiprocessing.get_all_start_methods()
    if wanted:
        if wanted not in methods:
            raise SweepError(f"MACSSIM_SWEEP_START={wanted!r}: this platform starts processes "
                             f"with {', '.join(methods)}")
        return wanted
    return "fork" if "fork" in methods else "spawn"


def _on_ray(todo: list[Point], address: str, jobs: int) -> Results:
    try:
        import ray
    except ImportError:
        raise SweepError("sweep --ray needs Ray: pip install 'macssim[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address == "local":
            kwargs["num_cpus"] = jobs
        else:
            kwargs["address"] = address
        try:
            ray.init(**kwargs)
        except Exception as e:  # connection refused, bad address, …
            raise SweepError(f"sweep --ray {address}: cannot start or reach Ray "
                             f"({' '.join(str(e).split())[:300]})") from e
    task = ray.remote(num_cpus=1)(_ray_point)
    pending: dict[Any, Point] = {}
    try:
        pending = {task.remote(p.to_dict()): p for p in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                point = pending.pop(ref)
                yield point, ray.get(ref)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()


def _ray_point(point_data: dict[str, Any]) -> list[dict[str, Any]]:
    worker_init()
    return run_point(point_data)
