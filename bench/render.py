"""Renders per second over 100,000 contacts: the engine's paths against bare Jinja2 on the same body.

Run: .venv/bin/python bench/render.py [contacts]
Goal: engine / bare Jinja2 >= 0.5. The three paths run interleaved in rounds over the same contacts and are
timed in process CPU time, so another process's load on this shared machine skews none of them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import date

from jinja2 import Environment

from engine.layout import compile_email, render_email
from engine.rendering import convert_placeholders, render_body, render_context
from engine.starters import starter_templates

GOAL = 0.5
ROUNDS = 20
UNSUBSCRIBE = "https://unsubscribe.example/u/{}"
TODAY = date(2026, 11, 24)


def contacts(n: int) -> list[dict]:
    """Contacts shaped like rows from the contacts table (every one different)."""
    return [
        {"id": i, "email": f"contact{i}@firm{i % 997}.example", "first_name": f"Prénom{i}",
         "last_name": f"Nom{i}", "company": f"Cabinet {i} & Associés", "website": f"https://firm{i}.example",
         "country": "FR", "language": "fr", "category": "avocat"}
        for i in range(n)
    ]


def paths(starter) -> dict[str, Callable[[list[dict]], None]]:
    """The three renderers, each taking a batch of contact rows."""
    bare = Environment().from_string(convert_placeholders(starter.body_html))

    def cached():
        return compile_email(starter.subject, starter.body_html, starter.body_text, language=starter.language,
                             cache_key=("bench", 1))

    def run_bare(rows: list[dict]) -> None:
        for row in rows:
            bare.render(row)

    def run_body_only(rows: list[dict]) -> None:
        # What a campaign pays for the body alone: cache lookup, context build, sandboxed strict render.
        for row in rows:
            render_body(cached(), render_context(row, None, UNSUBSCRIBE.format(row["id"]), today=TODAY))

    def run_full(rows: list[dict]) -> None:
        # The campaign path: cached compiled template, context, subject + layout-wrapped HTML + text part.
        for row in rows:
            render_email(cached(), render_context(row, None, UNSUBSCRIBE.format(row["id"]), today=TODAY))

    return {"bare Jinja2 Environment().from_string(body).render": run_bare,
            "engine body only (sandbox, strict, cache, context)": run_body_only,
            "engine full message (subject+layout HTML+text)": run_full}


def main(n: int = 100_000) -> int:
    starter = next(s for s in starter_templates() if s.language == "fr" and s.category is None)
    rows = contacts(n)
    runners = paths(starter)
    sample = render_email(compile_email(starter.subject, starter.body_html, None, language="fr"),
                          render_context(rows[0], None, UNSUBSCRIBE.format(0), today=TODAY))
    print(f"{n:,} contacts in {ROUNDS} interleaved rounds; template {starter.name!r}; one message = "
          f"{len(sample.html):,} B HTML + {len(sample.text):,} B text")
    for run in runners.values():
        run(rows[:1000])  # warm-up: first-call costs out of the figures
    cpu = dict.fromkeys(runners, 0.0)
    step = -(-n // ROUNDS)
    for r, start in enumerate(range(0, n, step)):
        batch = rows[start:start + step]
        names = list(runners)
        for name in names[r % 3:] + names[:r % 3]:  # rotate the order so no path always runs first
            t0 = time.process_time()
            runners[name](batch)
            cpu[name] += time.process_time() - t0
    rates = {name: n / seconds for name, seconds in cpu.items()}
    for name, rate in rates.items():
        print(f"{name:<52} {rate:>10,.0f} renders/s  ({1e6 / rate:6.2f} µs CPU each)")
    baseline, body_rate, full_rate = rates.values()
    body_ratio, full_ratio = body_rate / baseline, full_rate / baseline
    print(f"ratio body-only / bare = {body_ratio:.2f}   ratio full message / bare = {full_ratio:.2f}   "
          f"(goal >= {GOAL})")
    return 0 if body_ratio >= GOAL and full_ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
