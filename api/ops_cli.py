"""The operations commands: `email-engine dns records|check|keygen`, `pmta config` and `blocklist check`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from engine import db as dbm
from engine.settings import Settings

HELP = {
    "dns": "DNS of the sending domains: `records` prints what to publish (BIND or JSON), `check` queries the "
           "configured resolvers (EMAIL_ENGINE_DNS_SERVERS) and stores each record's status, `keygen` makes the "
           "DKIM key pair of every domain that has none yet.",
    "pmta": "PowerMTA: `config` prints (or with --out writes atomically, plus the DKIM key files) the PowerMTA "
            "configuration generated from the database.",
    "blocklist": "Blocklists: `check` looks every sending IP and domain up on the configured DNS blocklists, "
                 "pausing what is listed.",
}


def add_commands(sub: Any) -> None:
    """Register the subcommands on the main parser's subparsers."""
    dns = sub.add_parser("dns", help=HELP["dns"].split(": ")[0] + ".", description=HELP["dns"])
    dns_sub = dns.add_subparsers(dest="action", required=True, metavar="ACTION")
    records = dns_sub.add_parser("records", help="print the records to publish")
    records.add_argument("--domain", help="only this sending domain")
    records.add_argument("--tenant", type=int, help="only this tenant's domains")
    records.add_argument("--format", choices=("bind", "json"), default="bind")
    check = dns_sub.add_parser("check", help="check the published records now and store the result")
    check.add_argument("--tenant", type=int, help="only this tenant's domains and IPs")
    keygen = dns_sub.add_parser("keygen", help="make the DKIM key pair of every domain that has none")
    keygen.add_argument("--tenant", type=int, help="only this tenant's domains")
    pmta = sub.add_parser("pmta", help=HELP["pmta"].split(": ")[0] + ".", description=HELP["pmta"])
    pmta_sub = pmta.add_subparsers(dest="action", required=True, metavar="ACTION")
    config = pmta_sub.add_parser("config", help="print or write the generated PowerMTA configuration")
    config.add_argument("--tenant", type=int, help="only this tenant's IPs, pool and domains")
    config.add_argument("--out", help="write here (atomically) instead of printing; runs EMAIL_ENGINE_PMTA_RELOAD "
                                      "when the file changed")
    blocklist = sub.add_parser("blocklist", help=HELP["blocklist"].split(": ")[0] + ".",
                               description=HELP["blocklist"])
    bl_sub = blocklist.add_subparsers(dest="action", required=True, metavar="ACTION")
    bl_check = bl_sub.add_parser("check", help="look every sending IP and domain up now")
    bl_check.add_argument("--tenant", type=int, help="only this tenant's IPs and domains")


COMMANDS = frozenset(HELP)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one operations command against the configured stores; the exit status."""
    from api.cli import runtime, stores

    with stores(settings) as resolved:
        rt = runtime(resolved)
        action = _ACTIONS[(args.command, args.action)]
        return asyncio.run(_with_db(resolved, lambda db: action(db, resolved, rt.secret_key, args)))


async def _with_db(settings: Settings, body: Callable[[Any], Awaitable[int]]) -> int:
    await dbm.migrate(settings.database_url)
    pool = await dbm.create_pool(settings.database_url, min_size=1, max_size=4)
    try:
        return await body(pool)
    finally:
        await pool.close()


async def dns_records(db: Any, settings: Settings, secret_key: str, args: argparse.Namespace) -> int:
    from engine import dns_records as records

    found = await records.list_records(db, args.tenant, name=args.domain.lower() if args.domain else None)
    if args.domain and not found:
        print(f"email-engine: no sending domain {args.domain}", file=sys.stderr)
        return 1
    if args.format == "json":
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(found)).decode() + "\n")
    else:
        sys.stdout.write(records.to_bind(found))
    return 0


async def dns_check(db: Any, settings: Settings, secret_key: str, args: argparse.Namespace) -> int:
    from engine import dns_checks
    from engine.dns_lookup import Resolver

    async with Resolver(settings.dns_servers) as resolver:
        reports = await dns_checks.run_checks(db, resolver, args.tenant)
    held = 0
    for name, report in sorted(reports.items()):
        statuses = " ".join(f"{record}={finding.status}" for record, finding in report.items())
        print(f"{name} {statuses}")
        for record, finding in report.items():
            if finding.status != "ok" and finding.detail:
                print(f"    {record}: {finding.detail}")
        held += any(report[r].status in dns_checks.HOLDING for r in ("spf", "dkim"))
    print(f"{len(reports)} domain(s) checked, {held} held from sending (SPF or DKIM wrong)")
    return 0


async def dns_keygen(db: Any, settings: Settings, secret_key: str, args: argparse.Namespace) -> int:
    from engine import domains

    made = await domains.generate_missing_keys(db, secret_key, args.tenant)
    print(f"{made} DKIM key pair(s) generated")
    return 0


async def pmta_config(db: Any, settings: Settings, secret_key: str, args: argparse.Namespace) -> int:
    from pmta import generate

    if not args.out:
        text, _keys = await generate.build(db, settings, secret_key, tenant_id=args.tenant)
        sys.stdout.write(text)
        return 0
    outcome = await generate.sync(db, settings, secret_key, tenant_id=args.tenant, path=args.out)
    print(outcome.summary())
    return 0 if outcome.reload_error is None else 1


async def blocklist_check(db: Any, settings: Settings, secret_key: str, args: argparse.Namespace) -> int:
    from engine import blocklists
    from engine.dns_lookup import Resolver

    policy = blocklists.load_policy(settings.blocklists_file)
    async with Resolver(settings.dns_servers) as resolver, db.acquire() as conn:  # status changes need one connection
        result = await blocklists.watch(conn, resolver, policy, args.tenant)
    for line in result.lines():
        print(line)
    return 0


_ACTIONS = {("dns", "records"): dns_records, ("dns", "check"): dns_check, ("dns", "keygen"): dns_keygen,
            ("pmta", "config"): pmta_config, ("blocklist", "check"): blocklist_check}
