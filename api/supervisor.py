"""`up`'s child processes: the workers and the PowerMTA stand-in, restarted when one dies, stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

import msgspec

log = logging.getLogger("email-engine")

# Restart policy: a child that dies is started again after a pause that doubles while it keeps dying
# young (a crash loop must not spin a core), and falls back to the first pause once it has lived a while.
RESTART_FIRST = 0.5
RESTART_MAX = 30.0
LIVED_LONG_ENOUGH = 30.0
# How long a child gets to finish its jobs after SIGTERM before it is killed: arq gives running jobs
# this long too, and every job is written to be re-run safely if it is cut short.
STOP_GRACE = 20.0
_PR_SET_PDEATHSIG = 1


class ChildSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A process to keep running: a name for the logs, its command line and its environment."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends SIGTERM if `up` itself dies without cleaning up (kill -9)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """Starts every child, restarts the ones that exit, and stops them all on `stop()`."""

    def __init__(self, specs: Sequence[ChildSpec]) -> None:
        self.specs = list(specs)
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.restarts: dict[str, int] = {spec.name: 0 for spec in self.specs}
        self._stopping = False
        self._tasks: list[asyncio.Task] = []

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items() if proc.returncode is None}

    async def start(self) -> None:
        for spec in self.specs:
            await self._spawn(spec)
            self._tasks.append(asyncio.create_task(self._keep(spec), name=f"supervise-{spec.name}"))

    async def _spawn(self, spec: ChildSpec) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *spec.argv, env=spec.env, stdin=asyncio.subprocess.DEVNULL,
            # own process group: a terminal's Ctrl-C reaches `up` only, which stops the children in order
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        self.procs[spec.name] = proc
        log.info("%s started (pid %d)", spec.name, proc.pid)
        return proc

    async def _keep(self, spec: ChildSpec) -> None:
        pause = RESTART_FIRST
        while True:
            started = time.monotonic()
            code = await self.procs[spec.name].wait()
            if self._stopping:
                return
            lived = time.monotonic() - started
            pause = RESTART_FIRST if lived >= LIVED_LONG_ENOUGH else min(RESTART_MAX, pause * 2)
            log.warning("%s exited with %s after %.0f s; restarting in %.1f s", spec.name, code, lived, pause)
            await asyncio.sleep(pause)
            if self._stopping:
                return
            self.restarts[spec.name] += 1
            await self._spawn(spec)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM to every child, SIGKILL to any still running after `grace` seconds; waits for all."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        running = [p for p in self.procs.values() if p.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), grace)
        except TimeoutError:
            for proc in running:
                if proc.returncode is None:
                    log.warning("pid %d did not stop within %.0f s; killed", proc.pid, grace)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in running))
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
