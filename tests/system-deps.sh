#!/usr/bin/env bash
# Debian packages the test suite and the benchmarks need, installed only when missing.
#   chromium   - headless browser for the right-to-left layout test and the dashboard tests (driven by the
#                dev extra's playwright package, which never downloads a browser of its own here)
#   postfix    - only for /usr/sbin/smtp-sink and smtp-source (the mail system is never configured or started)
#   prometheus - a live Prometheus (and promtool) for the metrics, dashboard and alert-rules test (never started
#                as a service: the test runs its own)
#   dovecot-imapd - the IMAP server the reply-detection tests start on a high port (tests/imapserver.py)
#   spamassassin - the spam check of every library message (local rules only, never sa-update or network tests)
#   nodejs, npm  - the email-client support check (@jsx-email/doiuse-email, installed by tests/run.sh)
#   fonts-noto-core, fonts-noto-cjk - Devanagari, Arabic and CJK glyphs, so the browser lays out (and the
#                  screenshots show) Hindi and Chinese as readers see them rather than as boxes
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/sbin/smtp-sink ] || need+=(postfix)
[ -x /usr/bin/prometheus ] || need+=(prometheus)
[ -x /usr/sbin/dovecot ] || need+=(dovecot-imapd)
perl -MMail::SpamAssassin -e 1 2>/dev/null || need+=(spamassassin)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
fc-list :lang=hi 2>/dev/null | grep -q . || need+=(fonts-noto-core)
fc-list :lang=zh 2>/dev/null | grep -q . || need+=(fonts-noto-cjk)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "system-deps: missing ${need[*]}; run as root or: sudo apt-get install -y ${need[*]}" >&2
  exit 0
fi
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
