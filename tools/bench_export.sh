#!/usr/bin/env bash
# Export throughput of a fully written volume vs `cp --sparse=always` of the same raw image,
# on the same disk, one run each, with the release binary. Both copies are made durable
# (thinpool export fsyncs its output; cp is followed by `sync FILE`).
#
# Usage: tools/bench_export.sh            (SIZE=2G by default; BENCH_DIR=dir for scratch)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-2G}
cargo build --release --bin thinpool >/dev/null 2>&1 || cargo build --release --bin thinpool
T=$PWD/target/release/thinpool
DIR=$(mktemp -d -p "${BENCH_DIR:-${TMPDIR:-/var/tmp}}" thinpool-bench-export.XXXXXX)
trap 'rm -rf "$DIR"' EXIT

now() { date +%s.%N; }
bytes=$(numfmt --from=iec "$SIZE")

# The raw image: incompressible, every block written.
head -c "$bytes" /dev/urandom > "$DIR/src.raw"
"$T" pool create "$DIR/pool" --size "$((bytes + (256 << 20)))" >/dev/null
"$T" import "$DIR/pool" vol "$DIR/src.raw" >/dev/null
sync -f "$DIR/src.raw"

t0=$(now)
cp --sparse=always "$DIR/src.raw" "$DIR/cp.raw"
sync "$DIR/cp.raw"
t1=$(now)
"$T" export "$DIR/pool" vol "$DIR/export.raw" >/dev/null
t2=$(now)

cmp "$DIR/src.raw" "$DIR/export.raw"
awk -v b="$bytes" -v t0="$t0" -v t1="$t1" -v t2="$t2" 'BEGIN {
  mib = b / 1048576; cp = t1 - t0; ex = t2 - t1
  printf "volume %.0f MiB, fully written\n", mib
  printf "cp --sparse=always + sync: %.2f s (%.0f MiB/s)\n", cp, mib / cp
  printf "thinpool export:           %.2f s (%.0f MiB/s)\n", ex, mib / ex
  printf "export / cp throughput ratio: %.2f (target >= 0.8)\n", cp / ex
}'
