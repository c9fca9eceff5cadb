#!/usr/bin/env bash
# Runs Bolt's tests. They use real parts: the embedded store, real child processes,
# Debian's ruby, and Debian's python3 with pymongo as a third-party MongoDB client.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v go >/dev/null || missing+=("Go 1.26 (https://go.dev/dl/)")
command -v ruby >/dev/null || missing+=("ruby (sudo apt-get install -y ruby)")
/usr/bin/python3 -c 'import pymongo' 2>/dev/null || missing+=("pymongo for /usr/bin/python3 (sudo apt-get install -y python3-pymongo)")
if ((${#missing[@]})); then
  echo "test: missing:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi

go vet ./...
go test -count=1 -timeout 40m "$@" ./...
