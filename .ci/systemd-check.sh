#!/usr/bin/env bash
# Checks systemd/edgeloop.service:
# 1. `systemd-analyze verify` prints nothing. It exits 0 even on a misspelt
#    `Type=`, so any output fails. It also complains when the ExecStart binary
#    does not exist: the copy checked here points ExecStart at the binary
#    built by cargo (argument 1, default target/debug/edgeloop), everything
#    else unchanged.
# 2. `systemd-analyze security --offline=yes` exposure (printed; README.md
#    keeps the number) must stay "OK" (2.0 or lower).
set -euo pipefail
cd "$(dirname "$0")/.."
unit=systemd/edgeloop.service
bin=$(realpath "${1:-${CARGO_TARGET_DIR:-target}/debug/edgeloop}")
[ -x "$bin" ] || { echo "systemd-check: $bin is not built" >&2; exit 1; }
if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "s#^ExecStart=/usr/bin/edgeloop #ExecStart=$bin #" "$unit" > "$work/edgeloop.service"
grep -q "^ExecStart=$bin " "$work/edgeloop.service"
out=$(systemd-analyze verify "$work/edgeloop.service" 2>&1 || true)
if [ -n "$out" ]; then
  echo "systemd-analyze verify $unit:" >&2
  echo "$out" >&2
  exit 1
fi
echo "systemd-analyze verify: clean"
report=$(systemd-analyze security --offline=yes "$unit" 2>&1)
# Search trials lower their own threads' priority (setpriority, in
# @resources): systemd's own reading of the unit must say it is allowed.
if ! grep -q 'setpriority is allowed' <<<"$report"; then
  echo "systemd-analyze security: setpriority is not allowed (search trials would run at ingest's priority)" >&2
  exit 1
fi
level=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\) \([A-Z]*\).*/\1 \2/p' <<<"$report")
echo "systemd-analyze security --offline=yes: $level"
case "$level" in
  *" OK") ;;
  *) echo "exposure above OK (2.0): $level" >&2; exit 1 ;;
esac
