#!/usr/bin/env bash
# Mutation testing of the modules whose mistakes cost a sender its reputation (the send policy and bounce
# classification, quotas, rotation, suppression, unsubscribe tokens, warmup decisions): mutmut changes one
# thing at a time in them ([tool.mutmut] in pyproject.toml) and runs the tests that cover that function;
# a mutant the tests do not notice is listed at the end. Not part of CI: a full run takes the better part of
# an hour on two cores. Extra arguments go to `mutmut run` (e.g. --max-children 1 on a shared machine).
#
# Uses the same PostgreSQL and Redis as the tests (EMAIL_ENGINE_TEST_DATABASE_URL / _REDIS_URL, else embedded).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q -e '.[dev,reliability]'
.venv/bin/mutmut run "$@" || true
.venv/bin/python mutation/summary.py
