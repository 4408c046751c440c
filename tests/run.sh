#!/usr/bin/env bash
# The test command: installs what the suite needs (a virtualenv with the dev extra, Debian's chromium, prometheus,
# Dovecot, spamassassin, node and Postfix's smtp-sink when missing, the npm packages of tests/clients), then
# runs pytest with line and branch coverage and prints both figures at the end. Extra arguments go to pytest;
# a full run (no arguments) fails below 90% line coverage.
#
# With EMAIL_ENGINE_TEST_DATABASE_URL / EMAIL_ENGINE_TEST_REDIS_URL set, the suite uses those servers;
# otherwise it starts embedded PostgreSQL and Redis itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/system-deps.sh
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q -e '.[dev]'
if [ ! -d tests/clients/node_modules ]; then
  npm ci --prefix tests/clients --no-audit --no-fund --silent
fi
status=0
.venv/bin/python -m pytest -p no:cacheprovider --cov --cov-report=term:skip-covered "$@" || status=$?
minimum=0
if [ $# -eq 0 ]; then
  minimum=90
fi
.venv/bin/python tests/coverage_summary.py --min-lines "$minimum" || { [ "$status" -ne 0 ] || status=1; }
exit "$status"
