"""Every job a worker runs is counted by name and outcome, timed, and logs with its job id."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from typing import Any

from arq import Retry, Worker

from engine import logs, metrics


def _observed(name: str, coroutine: Any) -> Any:
    @functools.wraps(coroutine)
    async def run(ctx: dict, *args: Any, **kwargs: Any) -> Any:
        token = logs.job_id.set(ctx.get("job_id"))
        started = time.perf_counter()
        outcome = "failed"
        try:
            result = await coroutine(ctx, *args, **kwargs)
            outcome = "ok"
            return result
        except Retry:
            outcome = "retried"
            raise
        except asyncio.CancelledError:  # the job's timeout, or the worker stopping: arq runs it again
            outcome = "cancelled"
            raise
        finally:
            metrics.JOBS.labels(name, outcome).inc()
            metrics.JOB_SECONDS.labels(name).observe(time.perf_counter() - started)
            logs.job_id.reset(token)

    return run


def instrument(worker: Worker) -> Worker:
    """Wrap each of the worker's functions and crons (arq runs `functions[name].coroutine(ctx, ...)`); copies,
    so a Function object shared by several workers is never wrapped twice."""
    for name, function in list(worker.functions.items()):
        worker.functions[name] = dataclasses.replace(function, coroutine=_observed(name, function.coroutine))
    return worker
