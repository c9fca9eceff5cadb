# Benchmarks; see docs/benchmarks.md. Tests: bash scripts/test.sh.
.PHONY: bench bench-smoke

# Every measurement of docs/benchmarks.md: about 20 minutes on 2 cores. It installs the
# Debian packages it needs (hyperfine, ruby, redis-server, ruby-sidekiq, python3-celery,
# python3-redis) with apt-get.
bench:
	bash bench/run.sh

# A tiny run of every step, well under 3 minutes, so the benchmark scripts keep working.
bench-smoke:
	bash bench/run.sh --smoke
