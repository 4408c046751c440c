"""A real Dovecot IMAP server for the tests: unprivileged, on a free high port, configured in a temp dir.

Debian's `dovecot-imapd` (tests/system-deps.sh installs it). The config is generated here: plaintext login
on 127.0.0.1 without TLS, a passwd-file passdb with one static password per user, Maildir mailboxes under the
temp dir. Run as root (CI), mail is owned by `nobody` and the services run as Dovecot's own users; run as
anyone else, everything runs as that user. Messages are delivered with IMAP APPEND, as a client would file them.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

DOVECOT = "/usr/sbin/dovecot"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dovecot:
    def __init__(self, root: Path, users: dict[str, str]) -> None:
        self.root = root
        self.users = users
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.pid: int | None = None

    def _config(self) -> str:
        if os.geteuid() == 0:
            internal, login = "dovecot", "dovenull"
            uid = gid = pwd.getpwnam("nobody").pw_uid
            gid = pwd.getpwnam("nobody").pw_gid
        else:
            internal = login = pwd.getpwuid(os.geteuid()).pw_name
            uid, gid = os.geteuid(), os.getegid()
        r = self.root
        return f"""
protocols = imap
listen = {self.host}
base_dir = {r}/run
state_dir = {r}/state
instance_name = ee-test-{self.port}
log_path = {r}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = 1
mail_location = maildir:{r}/mail/%u
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {self.port}
  }}
}}
service anvil {{
  chroot =
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {r}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={r}/mail/%u
}}
"""

    def start(self) -> None:
        for sub in ("run", "state", "mail"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        (self.root / "users").write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in self.users.items()))
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root / "mail", nobody.pw_uid, nobody.pw_gid)
        conf = self.root / "dovecot.conf"
        conf.write_text(self._config())
        subprocess.run([DOVECOT, "-c", str(conf)], check=True, timeout=30)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dovecot did not listen: {(self.root / 'dovecot.log').read_text()}") from None
                time.sleep(0.05)
        pid_file = self.root / "run" / "master.pid"
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.pid = int(pid_file.read_text().strip())

    def stop(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            self.pid = None

    def deliver(self, user: str, message: bytes, folder: str = "INBOX") -> None:
        """File a message in the user's folder (IMAP APPEND)."""
        client = imaplib.IMAP4(self.host, self.port, timeout=10)
        try:
            client.login(user, self.users[user])
            status, _ = client.append(folder, None, None, message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
            assert status == "OK", status
        finally:
            client.logout()


@contextlib.contextmanager
def dovecot(users: dict[str, str]) -> Iterator[Dovecot]:
    """A running Dovecot with these users, in a directory of its own (pytest's tmp_path is private to the
    test's user, and Dovecot's mail processes run as another one when the tests run as root)."""
    root = Path(tempfile.mkdtemp(prefix="ee-dovecot-"))
    server = Dovecot(root, users)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
