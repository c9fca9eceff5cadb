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
# Each runs ROUNDS times with the variants interleaved, so that a burst of load from
# elsewhere hits one round of one variant rather than all of it; compare the best
# round of each variant.
rounds=${ROUNDS:-3}
go test -run '^$' -bench 'NoopTasks' -benchtime "${NOOP_TASKS:-200}x" -count "$rounds" ./rubypreload/
go test -run '^$' -bench 'TaskStartSlowBoot' -benchtime "${SLOW_BOOT_TASKS:-5}x" -count "$rounds" ./rubypreload/

echo "load after: $(uptime)"
