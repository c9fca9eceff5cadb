#!/usr/bin/env bash
# Measures Bolt against the physical limit (xargs -P, a bare Ruby fork loop) and against
# Sidekiq and Celery. docs/benchmarks.md describes each step and the last full results.
#
# Usage: bench/run.sh          the full benchmark (about 20 minutes on 2 cores),
#                              results in bench/results/full/
#        bench/run.sh --smoke  a tiny version of every step, to keep the scripts working,
#                              results in bench/results/smoke/
#
# Sizes come from the environment: BENCH_RUNS, BENCH_TASKS, BENCH_RUBY_TASKS,
# BENCH_PICKUP_SAMPLES, BENCH_IDLE_SECONDS, BENCH_BACKLOGS, BENCH_BACKLOG_DUE,
# BENCH_COMPARE_JOBS. BENCH_STEPS picks steps, for example "exec backlog" (default: all of
# "exec ruby pickup footprint backlog profile compare preload"). BENCH_BOLT names a bolt
# binary to measure in place of one built from the working tree. Every server it starts
# listens on 127.0.0.1, and every client it starts talks to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH=/usr/local/go/bin:$PATH

mode=full
case "${1:-}" in
  "") ;;
  --smoke) mode=smoke ;;
  *) echo "usage: bench/run.sh [--smoke]" >&2; exit 2 ;;
esac

if [[ $mode == full ]]; then
  runs=${BENCH_RUNS:-3}
  tasks=${BENCH_TASKS:-2000}
  ruby_tasks=${BENCH_RUBY_TASKS:-500}
  pickup_samples=${BENCH_PICKUP_SAMPLES:-200}
  idle_seconds=${BENCH_IDLE_SECONDS:-30}
  backlogs=${BENCH_BACKLOGS:-1000,10000,50000}
  backlog_due=${BENCH_BACKLOG_DUE:-10}
  compare_jobs=${BENCH_COMPARE_JOBS:-1000}
  profile_backlog=10000
else
  runs=${BENCH_RUNS:-1}
  tasks=${BENCH_TASKS:-200}
  ruby_tasks=${BENCH_RUBY_TASKS:-50}
  pickup_samples=${BENCH_PICKUP_SAMPLES:-20}
  idle_seconds=${BENCH_IDLE_SECONDS:-3}
  backlogs=${BENCH_BACKLOGS:-100,1000}
  backlog_due=${BENCH_BACKLOG_DUE:-5}
  compare_jobs=${BENCH_COMPARE_JOBS:-50}
  profile_backlog=500
fi
steps=${BENCH_STEPS:-exec ruby pickup footprint backlog profile compare preload}

results=${BENCH_RESULTS:-$root/bench/results/$mode}
work=$(mktemp -d /tmp/bolt-bench.XXXXXX)
bolt=${BENCH_BOLT:-$root/bin/bolt}
boltbench=$work/boltbench
started_pids=()
redis=()

step() { echo "bench: [$(date +%H:%M:%S)] $*" >&2; }

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# mark TEXT shows the step that starts and records the load average with it.
mark() {
  step "$1"
  printf '| %s | %s | %s |\n' "$(date +%H:%M:%S)" "$1" "$(loadavg)" >> "$results/load.md"
}

# stop PID stops a background process that this script started and drops it from started_pids.
stop() {
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local pid kept=()
  for pid in "${started_pids[@]}"; do
    [[ $pid == "$1" ]] || kept+=("$pid")
  done
  started_pids=("${kept[@]}")
}

# cleanup stops the background processes that are still running, by their process ids.
cleanup() {
  while ((${#started_pids[@]})); do
    stop "${started_pids[0]}"
  done
  rm -rf "$work"
}
trap cleanup EXIT

# new_app NAME [SETTING...] makes an application folder with the benchmark's tasks and its
# own embedded store on a free loopback port, and prints its path.
new_app() {
  local dir=$work/$1
  shift
  mkdir -p "$dir"
  cp -r "$root/bench/app/." "$dir/"
  {
    echo "db_listen = 127.0.0.1:0"
    echo "heartbeat_dir = $work/heartbeat"
    echo "stop_grace = 2"
    echo "kill_grace = 1"
    printf '%s\n' "$@"
  } > "$dir/bolt.conf"
  echo "$dir"
}

# wait_for_line FILE TEXT waits up to a minute for TEXT to appear in FILE.
wait_for_line() {
  for _ in $(seq 600); do
    grep -qF "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench: \"$2\" did not appear in $1 within a minute" >&2
  return 1
}

# fill_cmd APP TASK N prints the command that queues N due tasks, for hyperfine --prepare.
fill_cmd() { echo "$boltbench fill --app $1 --bolt $bolt --task $2 --due $3"; }

# drain_cmd APP N LABEL prints the command that drains APP's queue under boltbench drain,
# which checks that all N tasks succeeded and samples the daemon's memory and CPU.
drain_cmd() {
  echo "$boltbench drain --jobs $2 --log $1/log/flagella.log --out $results/drain.jsonl --label '$3' -- $bolt run --drain --app $1"
}

install_packages() {
  local packages=(hyperfine ruby) missing=() package
  if [[ $mode == full ]]; then
    packages+=(redis-server ruby-sidekiq python3-celery python3-redis)
  fi
  for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  ((${#missing[@]})) || return 0

  step "installing Debian packages: ${missing[*]}"
  local sudo_cmd=()
  ((EUID == 0)) || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

# wait_for_quiet waits up to 10 minutes for the 1-minute load average to fall below 1.5,
# because other work on the machine distorts every figure.
wait_for_quiet() {
  for _ in $(seq 20); do
    awk '{ exit !($1 < 1.5) }' /proc/loadavg && return 0
    step "load average $(loadavg), waiting for it to fall below 1.5"
    sleep 30
  done
  step "load average still $(loadavg) after 10 minutes; measuring anyway"
}

# 1. Executable no-op tasks through bolt run --drain, against the same executable run as
# often, 5 at a time, by xargs.
measure_exec() {
  mark "exec: $tasks executable no-op tasks, bolt run --drain against xargs -P 5, $runs runs each"
  local app
  app=$(new_app exec)
  hyperfine --runs "$runs" --show-output --export-json "$results/exec.json" \
    -n "Bolt, embedded store" --prepare "$(fill_cmd "$app" noop "$tasks")" \
    "$(drain_cmd "$app" "$tasks" "executable no-op")" \
    -n "xargs -P 5" --prepare true "seq $tasks | xargs -P 5 -n 1 $app/lib/bolt/tasks/noop"
}

# 2. Ruby no-op tasks, preloaded and fresh, against a Ruby loop that forks a child per task.
measure_ruby() {
  mark "ruby: $ruby_tasks Ruby no-op tasks, preloaded, fresh and a bare fork loop, $runs runs each"
  local preload fresh
  preload=$(new_app ruby-preload)
  fresh=$(new_app ruby-fresh "ruby_preload = false")
  hyperfine --runs "$runs" --show-output --export-json "$results/ruby.json" \
    -n "Bolt, preloading (default)" --prepare "$(fill_cmd "$preload" ruby_noop "$ruby_tasks")" \
    "$(drain_cmd "$preload" "$ruby_tasks" "Ruby no-op, preloading")" \
    -n "Bolt, ruby_preload = false" --prepare "$(fill_cmd "$fresh" ruby_noop "$ruby_tasks")" \
    "$(drain_cmd "$fresh" "$ruby_tasks" "Ruby no-op, ruby_preload = false")" \
    -n "bare Ruby fork loop" --prepare true "ruby $root/bench/fork_loop.rb $ruby_tasks 5"
}

# 3. Time from insert to the task's process start, on an idle daemon and on a busy one.
measure_pickup() {
  mark "pickup: $pickup_samples tasks inserted one by one into an idle daemon's queue"
  local app records daemon
  app=$(new_app pickup)
  records=$work/pickup-records
  BENCH_PICKUP_FILE=$records "$bolt" run --app "$app" > "$work/pickup-daemon.out" 2>&1 &
  daemon=$!
  started_pids+=("$daemon")
  wait_for_line "$app/log/flagella.log" "bolt: started"

  "$boltbench" pickup --app "$app" --bolt "$bolt" --samples "$pickup_samples" --record "$records" \
    --label "idle" --out "$results/pickup.jsonl"
  mark "pickup: the same on a busy daemon, 3 of 5 slots held by long tasks, 10 other tasks a second"
  "$boltbench" pickup --app "$app" --bolt "$bolt" --samples "$pickup_samples" --record "$records" \
    --hold 3 --stream-rate 10 --label "busy: 3 of 5 slots held, 10 other tasks/s" --out "$results/pickup.jsonl"
  stop "$daemon"
}

# 4. The idle daemon's memory and CPU, with the store inside it (the default) and in its
# own process, where a counting proxy also counts every command the daemon sends.
measure_footprint() {
  mark "footprint: idle for ${idle_seconds} s with the embedded store in the daemon"
  local app store address
  app=$(new_app idle)
  "$boltbench" footprint --seconds "${idle_seconds}s" --log "$app/log/flagella.log" \
    --label "embedded store in the daemon (default)" --out "$results/footprint.jsonl" -- "$bolt" run --app "$app"

  mark "footprint: idle for ${idle_seconds} s with the store in its own process, commands counted"
  app=$(new_app idle-separate)
  "$bolt" db --app "$app" --listen 127.0.0.1:0 > "$work/db.uri" &
  store=$!
  started_pids+=("$store")
  wait_for_line "$work/db.uri" "mongodb://"
  address=$(head -1 "$work/db.uri")
  address=${address#mongodb://}
  address=${address%/}
  "$boltbench" footprint --seconds "${idle_seconds}s" --log "$app/log/flagella.log" --count-commands "$address" \
    --store-pid "$store" --label "store in its own bolt db process" --out "$results/footprint.jsonl" \
    -- "$bolt" run --app "$app" --mongo-uri "{proxy}"
  stop "$store"
}

# 5. The same few due tasks drained while more and more tasks wait for a run_at in 2100.
# The backlog is inserted before the due tasks, as when scheduled work piles up.
measure_backlog() {
  mark "backlog: $backlog_due due tasks behind backlogs of ${backlogs//,/, } waiting tasks, $runs runs each"
  local size
  for size in ${backlogs//,/ }; do
    new_app "backlog-$size" > /dev/null
  done
  hyperfine --runs "$runs" --show-output --export-json "$results/backlog.json" -L backlog "$backlogs" \
    -n "backlog {backlog}" \
    --prepare "$boltbench fill --app $work/backlog-{backlog} --bolt $bolt --task noop --due $backlog_due --future {backlog}" \
    "$boltbench drain --jobs $backlog_due --log $work/backlog-{backlog}/log/flagella.log --out $results/backlog.jsonl --label 'backlog {backlog}' -- $bolt run --drain --app $work/backlog-{backlog}"
}

# profile_drain NAME DUE WAITING drains DUE tasks behind WAITING ones while
# bench/storeprofile serves the store in its own process with a CPU profile, and writes the
# profile's top functions to store-profile-NAME.txt.
profile_drain() {
  local name=$1 due=$2 waiting=$3 app server uri
  app=$(new_app "profile-$name")
  "$boltbench" fill --app "$app" --bolt "$bolt" --task noop --due "$due" --future "$waiting"
  "$work/storeprofile" --data "$app/.bolt/db" --profile "$results/store-$name.pprof" > "$work/profile-$name.uri" &
  server=$!
  started_pids+=("$server")
  wait_for_line "$work/profile-$name.uri" "mongodb://"
  uri=$(head -1 "$work/profile-$name.uri")
  "$boltbench" drain --jobs "$due" --log "$app/log/flagella.log" --out "$results/profile.jsonl" --store-pid "$server" \
    --label "$name: $due due tasks, $waiting waiting" -- "$bolt" run --drain --app "$app" --mongo-uri "$uri"
  stop "$server"
  go tool pprof -top -cum -nodecount=45 "$work/storeprofile" "$results/store-$name.pprof" > "$results/store-profile-$name.txt" 2>/dev/null
}

# CPU profiles of the embedded store, served by bench/storeprofile, while tasks drain from
# a short queue and from behind a backlog. They show where the time per task goes.
measure_profile() {
  mark "profile: CPU of daemon and store while $((tasks / 4)) tasks drain, then $backlog_due behind $profile_backlog waiting ones"
  go build -o "$work/storeprofile" ./bench/storeprofile
  profile_drain queue $((tasks / 4)) 0
  profile_drain backlog "$backlog_due" "$profile_backlog"
}

# start_redis starts a Redis without persistence on a loopback port for Sidekiq and Celery.
start_redis() {
  local port=$((20000 + RANDOM % 10000))
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no > "$work/redis.log" 2>&1 &
  redis_pid=$!
  started_pids+=("$redis_pid")
  redis=(redis-cli -h 127.0.0.1 -p "$port")
  for _ in $(seq 100); do
    [[ $("${redis[@]}" ping 2>/dev/null) == PONG ]] && break
    sleep 0.1
  done
  export REDIS_URL="redis://127.0.0.1:$port/0"
}

# compare_run SYSTEM JOB BOLT_TASK SIDEKIQ_CLASS CELERY_TASK fills SYSTEM's queue with
# compare_jobs jobs, then starts its worker and stops it when all are done.
compare_run() {
  local label="$1 $2"
  case "$1" in
    Bolt)
      "$boltbench" fill --app "$compare_app" --bolt "$bolt" --task "$3" --due "$compare_jobs"
      "$boltbench" worker --jobs "$compare_jobs" --done "task finished" --log "$compare_app/log/flagella.log" \
        --label "$label" --out "$results/compare.jsonl" -- "$bolt" run --app "$compare_app"
      ;;
    Sidekiq)
      "${redis[@]}" flushall > /dev/null
      ruby "$root/bench/sidekiq/enqueue.rb" "$4" "$compare_jobs"
      "$boltbench" worker --jobs "$compare_jobs" --done "INFO: done" --output "$work/sidekiq.out" \
        --label "$label" --out "$results/compare.jsonl" -- sidekiq -r "$root/bench/sidekiq/jobs.rb" -c 5
      ;;
    Celery)
      "${redis[@]}" flushall > /dev/null
      PYTHONPATH=$root/bench/celery /usr/bin/python3 "$root/bench/celery/enqueue.py" "$5" "$compare_jobs"
      PYTHONPATH=$root/bench/celery "$boltbench" worker --jobs "$compare_jobs" --done "succeeded in" \
        --output "$work/celery.out" --label "$label" --out "$results/compare.jsonl" \
        -- /usr/bin/python3 -m celery -A benchjobs worker --concurrency 5 --pool prefork --loglevel INFO
      ;;
  esac
}

# 6. Bolt (Ruby tasks, preloaded), Sidekiq and Celery on the same jobs, 5 at a time.
measure_compare() {
  local systems=(Bolt)
  if command -v redis-server >/dev/null && command -v sidekiq >/dev/null; then
    systems+=(Sidekiq)
  fi
  if command -v redis-server >/dev/null && /usr/bin/python3 -c 'import celery, redis' 2>/dev/null; then
    systems+=(Celery)
  fi
  mark "compare: ${systems[*]}, $compare_jobs no-op and 20 ms jobs, 5 at a time, $runs runs each"
  if ((${#systems[@]} > 1)); then
    start_redis
  fi
  compare_app=$(new_app compare)

  # Runs alternate between the systems, so that a change in the machine's load hits all alike.
  local run system
  for run in $(seq "$runs"); do
    for system in "${systems[@]}"; do
      step "compare: run $run of $runs, $system"
      compare_run "$system" "no-op" ruby_noop NoopJob noop
      compare_run "$system" "20 ms sleep" ruby_sleep20 Sleep20Job sleep20
    done
  done

  if ((${#redis[@]})); then
    awk '/VmRSS/ { print $2 }' "/proc/$redis_pid/status" > "$results/redis_rss_kb"
    stop "$redis_pid"
  fi
}

# The Ruby preloading benchmarks of package rubypreload, through their own script.
measure_preload() {
  [[ $mode == full && -f scripts/bench-ruby.sh ]] || return 0
  mark "preload: Ruby preloading benchmarks of package rubypreload (scripts/bench-ruby.sh)"
  bash scripts/bench-ruby.sh > "$results/ruby-preload.txt" 2>&1 ||
    step "scripts/bench-ruby.sh failed; its output is in $results/ruby-preload.txt"
}

write_summary() {
  echo "## Results of bench/run.sh ($mode), $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ { printf "%.1f GB", $2 / 1048576 }' /proc/meminfo) memory, $(. /etc/os-release && echo "$PRETTY_NAME"), Linux $(uname -r)"
  echo "- Bolt: $bolt_source"
  echo "- $(go version | cut -d' ' -f3-4), $(ruby -v | cut -d' ' -f1-2), $(hyperfine --version)"
  echo "- FerretDB $(go list -m -f '{{.Version}}' github.com/FerretDB/FerretDB), mongo-driver $(go list -m -f '{{.Version}}' go.mongodb.org/mongo-driver/v2)"
  if ((${#redis[@]})); then
    echo "- $(redis-server --version | cut -d' ' -f1-3), Sidekiq $(ruby -e 'require "sidekiq"; print Sidekiq::VERSION'), Celery $(/usr/bin/python3 -c 'import celery; print(celery.__version__)') on Python $(/usr/bin/python3 -c 'import platform; print(platform.python_version())')"
  fi
  echo "- runs per measurement: $runs; executable tasks: $tasks; Ruby tasks: $ruby_tasks; pickup samples: $pickup_samples; idle interval: ${idle_seconds} s; backlogs: $backlogs with $backlog_due due tasks; comparison jobs: $compare_jobs"
  echo
  "$boltbench" table --results "$results" --tasks "$tasks" --ruby-tasks "$ruby_tasks"
  if [[ -f $results/redis_rss_kb ]]; then
    echo "The Redis server that Sidekiq and Celery share had $(awk '{ printf "%.1f", $1 / 1024 }' "$results/redis_rss_kb") MB resident at the end; it is not in their sums. Bolt's sums include its embedded store."
    echo
  fi
  echo "### Load average while measuring"
  echo
  cat "$results/load.md"
}

install_packages
if [[ -n ${BENCH_BOLT:-} ]]; then
  bolt_source="$BENCH_BOLT, given in BENCH_BOLT"
else
  step "building bin/bolt"
  go build -o "$bolt" ./cmd/bolt
  bolt_source="bin/bolt built from commit $(git rev-parse --short HEAD)"
  if [[ -n $(git status --porcelain -- . ':!bench' ':!docs' ':!Makefile') ]]; then
    bolt_source+=" with uncommitted changes"
  fi
fi
step "building the benchmark helper"
go build -o "$boltbench" ./bench/boltbench

rm -rf "$results"
mkdir -p "$results"
printf '| time | step | load average (1, 5, 15 min) |\n|---|---|---|\n' > "$results/load.md"
if [[ $mode == full ]]; then
  wait_for_quiet
fi

for name in $steps; do
  case "$name" in
    exec | ruby | pickup | footprint | backlog | profile | compare | preload) "measure_$name" ;;
    *) echo "bench: unknown step $name in BENCH_STEPS" >&2; exit 2 ;;
  esac
done
mark "done"

write_summary > "$results/summary.md"
cat "$results/summary.md"
