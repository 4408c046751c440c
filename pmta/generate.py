"""The PowerMTA config from the database: rendered, written atomically with its DKIM key files, and applied by
the configured reload command when (and only when) something PowerMTA reads has changed."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import asyncpg
import msgspec

from engine import alert_events, mta_inventory
from engine.mta_inventory import Inventory
from engine.settings import Settings
from pmta.config import DEFAULT_ACCOUNTING_FILE, ConfigSpec, DkimKeySpec, PoolSpec, VmtaSpec, render_config

log = logging.getLogger(__name__)

SENDING = frozenset({"warming", "active"})
RELOAD_TIMEOUT = 60.0   # seconds: `pmta reload` answers in about a second; a hung one must not stall the job


class SyncOutcome(msgspec.Struct, kw_only=True):
    path: str
    changed: bool                 # the config or a key file was (re)written
    keys_written: int = 0
    keys_removed: int = 0
    reloaded: bool = False
    reload_error: str | None = None

    def summary(self) -> str:
        state = "rewritten" if self.changed else "unchanged"
        reload = (f"; reload failed: {self.reload_error}" if self.reload_error
                  else "; reloaded" if self.reloaded else "")
        return (f"{self.path} {state} ({self.keys_written} key file(s) written, {self.keys_removed} removed)"
                f"{reload}")


def key_path(settings: Settings, domain: str, selector: str) -> Path:
    return settings.pmta_dkim_dir / f"{domain}.{selector}.pem"


def spec_from(inventory: Inventory, settings: Settings) -> tuple[ConfigSpec, dict[Path, str]]:
    """The ConfigSpec for an inventory, and the key files (path -> PEM) its domain-key lines name."""
    vmtas, pools = [], {}
    for ip in inventory.ips:
        pool = f"{ip.tenant_slug}-pool"
        members = pools.setdefault(pool, [])
        # A paused or blacklisted IP keeps its definition (mail PowerMTA already queued on it still needs
        # its VMTA) but leaves its tenant's pool, so nothing selects it by the pool name.
        note = "" if ip.status in SENDING else f"{ip.status}: kept for mail already queued, out of {pool}"
        if ip.status in SENDING:
            members.append(ip.vmta_name)
        vmtas.append(VmtaSpec(name=ip.vmta_name, address=ip.address, hostname=ip.hostname,
                              max_per_day=ip.daily_quota, note=note))
    keys = {key_path(settings, k.domain, k.selector): k.private_pem for k in inventory.keys}
    dkim = tuple(DkimKeySpec(selector=k.selector, domain=k.domain, key_file=str(key_path(settings, k.domain, k.selector)))
                 for k in inventory.keys)
    # PowerMTA adds a date to the name as it rotates (acct-2026-12-01-0000.csv): what the engine reads.
    accounting = (str(settings.pmta_accounting_dir / "acct.csv") if settings.pmta_accounting_dir
                  else DEFAULT_ACCOUNTING_FILE)
    spec = ConfigSpec(vmtas=tuple(vmtas), pools=tuple(PoolSpec(name=n, vmtas=tuple(m)) for n, m in pools.items() if m),
                      dkim_keys=dkim, injector_addresses=settings.pmta_injectors, listener=settings.pmta_listener,
                      accounting_file=accounting, fbl_address=settings.pmta_fbl_address)
    return spec, keys


async def build(db: asyncpg.Connection | asyncpg.Pool, settings: Settings, secret_key: str, *,
                tenant_id: int | None = None) -> tuple[str, dict[Path, str]]:
    """The config text (the same database gives the same bytes) and the key files it refers to."""
    spec, keys = spec_from(await mta_inventory.load(db, secret_key, tenant_id), settings)
    return render_config(spec), keys


def write_atomic(path: Path, data: str, mode: int) -> None:
    """Write via a temporary file in the same directory, then rename: readers see the old or the new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_keys(directory: Path, keys: dict[Path, str], *, prune: bool) -> tuple[int, int]:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = removed = 0
    for path, pem in keys.items():
        if not path.exists() or path.read_text("utf-8") != pem:
            write_atomic(path, pem, 0o600)
            written += 1
    if prune:  # a rotated-out private key has no business staying on disk
        for stale in sorted(directory.glob("*.pem")):
            if stale not in keys:
                stale.unlink()
                removed += 1
    return written, removed


def _state_file(target: Path) -> Path:
    return target.with_name(f".{target.name}.applied")


def _write_files(target: Path, text: str, keys: dict[Path, str], settings: Settings,
                 prune: bool) -> tuple[SyncOutcome, str | None]:
    """Key files first (the config names them), then the config; and the digest last applied, if any."""
    written, removed = _write_keys(settings.pmta_dkim_dir, keys, prune=prune)
    changed = bool(written or removed)
    if not target.exists() or target.read_text("utf-8") != text:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, text, 0o644)
        changed = True
    state = _state_file(target)
    applied = state.read_text().strip() if state.exists() else None
    return SyncOutcome(path=str(target), changed=changed, keys_written=written, keys_removed=removed), applied


async def run_reload(command: str) -> str | None:
    """Run the reload command; None on success, else what went wrong (exit status and output)."""
    try:
        proc = await asyncio.create_subprocess_shell(command, stdout=asyncio.subprocess.PIPE,
                                                     stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        return f"`{command}` could not start: {exc}"
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), RELOAD_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"`{command}` did not finish within {RELOAD_TIMEOUT:.0f} s"
    if proc.returncode != 0:
        tail = output.decode("utf-8", errors="replace").strip()[-500:]
        return f"`{command}` exited with status {proc.returncode}" + (f": {tail}" if tail else "")
    return None


async def sync(db: asyncpg.Connection | asyncpg.Pool, settings: Settings, secret_key: str, *,
               path: str | Path, tenant_id: int | None = None) -> SyncOutcome:
    """Bring the config file and key files in line with the database; reload PowerMTA when they changed.

    What was last applied is remembered as a digest beside the file (`.NAME.applied`), so a reload that
    failed is tried again on the next run, and an unchanged database never reloads anything.
    """
    target = Path(path)
    text, keys = await build(db, settings, secret_key, tenant_id=tenant_id)
    outcome, applied = await asyncio.to_thread(_write_files, target, text, keys, settings, tenant_id is None)
    if not settings.pmta_reload:
        return outcome
    digest = hashlib.sha256(text.encode() + b"".join(str(p).encode() + pem.encode()
                                                      for p, pem in sorted(keys.items()))).hexdigest()
    if applied == digest:
        return outcome
    outcome.reload_error = await run_reload(settings.pmta_reload)
    if outcome.reload_error is None:
        await asyncio.to_thread(write_atomic, _state_file(target), digest + "\n", 0o644)
        outcome.reloaded = True
        log.info("PowerMTA config %s applied", target)
    else:
        log.error("PowerMTA config %s written but not applied: %s", target, outcome.reload_error)
        if outcome.changed:  # one alert per new config, not one a minute while PowerMTA stays broken
            await alert_events.raise_alert(db, None, "pmta_reload_failed",
                                           f"PowerMTA reload failed: {outcome.reload_error}",
                                           {"config": str(target), "command": settings.pmta_reload})
    return outcome
