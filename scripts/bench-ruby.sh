#!/usr/bin/env bash
# Measures Ruby task start-up with and without preloading (package rubypreload) and
# prints the machine's load, so that figures from a busy machine can be told apart.
# The results go into docs/benchmarks.md under "Ruby preloading".
set -euo pipefail
cd "$(dirname "$0")/.."

echo "load before: $(uptime)"
nproc | sed 's/^/cores: /'
ruby --version
go version

# NoopTasks: no-op tasks at 4 at a time; TaskStartSlowBoot: boot file sleeps 1 second.
go test -count=1 -run '^$' -bench 'NoopTasks' -benchtime "${NOOP_TASKS:-500}x" ./rubypreload/
go test -count=1 -run '^$' -bench 'TaskStartSlowBoot' -benchtime "${SLOW_BOOT_TASKS:-5}x" ./rubypreload/

echo "load after: $(uptime)"
