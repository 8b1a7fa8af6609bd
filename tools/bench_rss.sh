#!/usr/bin/env bash
# Peak memory of 1,000,000 scattered 4 KiB writes through the library (benches/rss.rs), measured
# by /usr/bin/time -v. Target: maximum resident set size < 150 MiB.
# Usage: tools/bench_rss.sh   (RSS_WRITES=N to change the number of writes)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/time ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -qq time >/dev/null
  else
    echo "/usr/bin/time missing (apt-get install time)" >&2
    exit 1
  fi
fi
cargo build --release --bench rss
bin=$(ls -t target/release/deps/rss-* | grep -v '\.d$' | head -1)
/usr/bin/time -v "$bin" 2>&1 | grep -E '^rss:|Maximum resident set size|Elapsed \(wall'
