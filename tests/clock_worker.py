"""A worker process whose campaigns run on a clock the test moves: `python -m tests.clock_worker CLOCK_FILE`.

The file holds one ISO timestamp; the test replaces it (atomically) to move time on. Everything else is the
real `email-engine worker`: settings from the environment, PowerMTA's injector, the arq worker and its
campaign sender, which takes every decision (windows, due rows, days) at the file's time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
from pathlib import Path

from engine.sending.dispatch import Tuning

FAST = Tuning(idle=0.05, max_wait=0.3, recover_every=0.5, validation_recheck=0.3, unreachable_retry=0.3)


class FileClock:
    """The time written in a file, read at every call."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.path.read_text().strip())

    def set(self, when: dt.datetime) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(when.isoformat())
        os.replace(tmp, self.path)


async def _main(clock_file: Path) -> None:
    from api.cli import runtime, stores
    from engine.settings import load_settings
    from workers.main import create_worker

    with stores(load_settings()) as settings:
        rt = runtime(settings)
        worker = create_worker(rt.settings, secret_key=rt.secret_key,
                               ctx={"clock": FileClock(clock_file), "dispatch_tuning": FAST})
        await worker.async_run()


if __name__ == "__main__":
    asyncio.run(_main(Path(sys.argv[1])))
