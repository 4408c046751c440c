"""Named SQL: migrations in `migrations/NNNN_name.sql`, queries in `queries/<noun>.sql`.

A query file holds blocks that start with `-- name: get-tenant`; the following comment lines up to the SQL are
its description, and an optional `-- returns: Tenant` names the Struct (in `engine.<noun>`) its rows become, so
a test can PREPARE every query against the real schema and compare its columns with the Struct.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import msgspec

HERE = Path(__file__).parent
MIGRATIONS = HERE / "migrations"
QUERIES = HERE / "queries"

_NAME = re.compile(r"^--\s*name:\s*([a-z0-9-]+)\s*$", re.MULTILINE)


class Query(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    noun: str
    sql: str
    returns: str | None = None


class Migration(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    name: str
    sql: str


def parse(noun: str, text: str) -> dict[str, Query]:
    """Split one query file into its named queries."""
    found: dict[str, Query] = {}
    marks = list(_NAME.finditer(text))
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[mark.end():end]
        returns = None
        sql_lines = []
        for line in body.splitlines():
            stripped = line.strip()
            if stripped.startswith("-- returns:"):
                returns = stripped.split(":", 1)[1].strip()
            elif sql_lines or (stripped and not stripped.startswith("--")):
                sql_lines.append(line)
        name = mark.group(1)
        if name in found:
            raise ValueError(f"sql/queries/{noun}.sql: query {name!r} is defined twice")
        found[name] = Query(name=name, noun=noun, sql="\n".join(sql_lines).strip().rstrip(";"), returns=returns)
    return found


@cache
def queries() -> dict[str, Query]:
    """Every named query of every noun, loaded once."""
    everything: dict[str, Query] = {}
    for path in sorted(QUERIES.glob("*.sql")):
        for name, query in parse(path.stem, path.read_text("utf-8")).items():
            if name in everything:
                raise ValueError(f"query {name!r} is defined in both {everything[name].noun}.sql and {path.name}")
            everything[name] = query
    return everything


def q(name: str) -> str:
    """The SQL text of one named query."""
    return queries()[name].sql


def migrations() -> list[Migration]:
    """Every migration, in version order."""
    found = []
    for path in sorted(MIGRATIONS.glob("*.sql")):
        version, _, name = path.stem.partition("_")
        found.append(Migration(version=int(version), name=name, sql=path.read_text("utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a version number: {versions}")
    return found
