#!/usr/bin/env bash
# Debian packages the test suite and the benchmarks need, installed only when missing.
#   chromium   - headless browser for the right-to-left layout test and the dashboard tests (driven by the
#                dev extra's playwright package, which never downloads a browser of its own here)
#   postfix    - only for /usr/sbin/smtp-sink and smtp-source (the mail system is never configured or started)
#   prometheus - a live Prometheus (and promtool) for the metrics, dashboard and alert-rules test (never started
#                as a service: the test runs its own)
#   dovecot-imapd - the IMAP server the reply-detection tests start on a high port (tests/imapserver.py)
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/sbin/smtp-sink ] || need+=(postfix)
[ -x /usr/bin/prometheus ] || need+=(prometheus)
[ -x /usr/sbin/dovecot ] || need+=(dovecot-imapd)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "system-deps: missing ${need[*]}; run as root or: sudo apt-get install -y ${need[*]}" >&2
  exit 0
fi
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
