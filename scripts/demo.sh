#!/usr/bin/env bash
# Runs Bolt on the embedded store against the example application: builds the binary,
# enqueues a few tasks (Ruby and executable, one of them failing on purpose), runs them
# all with `bolt run --drain`, and shows their outcomes.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null; then
  echo "demo: Go is missing; install Go 1.26 from https://go.dev/dl/ and run this again" >&2
  exit 1
fi
if ! command -v ruby >/dev/null; then
  echo "demo: Ruby is missing; on Debian or Ubuntu run: sudo apt-get install -y ruby" >&2
  exit 1
fi

echo "demo: building bin/bolt (the first build takes a few minutes)"
go build -o bin/bolt ./cmd/bolt

app=example
rm -rf "$app/.bolt" "$app/log" "$app/tmp"
export CURRENT_ENV=development

echo "demo: enqueueing tasks"
bin/bolt enqueue greet --app "$app" --json '{"name": "Ada"}'
bin/bolt enqueue reports/daily_sales --app "$app" \
  --json '{"day": "2026-12-04", "orders": [{"amount": 12}, {"amount": 30}]}'
bin/bolt enqueue reports/daily_sales --app "$app" --json '{"note": "no day: this one fails"}'
bin/bolt enqueue disk_usage --app "$app" --timeout 30

echo "demo: running them (bolt run --drain exits when nothing is left to do)"
bin/bolt run --drain --app "$app" 2>/dev/null

echo
echo "demo: outcomes from $app/log/flagella.log"
grep -E 'task (finished|failed|timed out|rejected)' "$app/log/flagella.log"
echo
echo "demo: notification mails written to $app/tmp/mail (no SMTP server is configured)"
ls -1 "$app/tmp/mail" 2>/dev/null || echo "(none)"
