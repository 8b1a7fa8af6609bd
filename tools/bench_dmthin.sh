#!/usr/bin/env bash
# dump/restore of a pool with MAPPINGS mappings (1,000,000 by default) beside Debian's
# thin_dump/thin_restore on the same description: one generated thin_dump XML is restored by
# both (thin_restore into a dm-thin metadata file, thinpool restore into a new pool), and each
# result is dumped again by its own tool. Every step is timed with its output made durable
# (`sync -f` of the file it wrote), ROUNDS times alternating (default 3); the medians and the
# largest max RSS are printed. Both dumps must equal the input, device by device (but for
# the devices' creation_time, which thinpool does not keep).
#
# The XML: device 1 maps 40 % of the mappings in runs of 1 (half of them) to 16 blocks with a
# gap after each run (so runs never merge), device 2 is a snapshot of device 1 (the same
# mappings: every block shared), device 3 maps the remaining 20 %. 64 KiB blocks.
#
# Usage: tools/bench_dmthin.sh            (MAPPINGS=1000000 ROUNDS=3 BENCH_DIR=dir)
set -euo pipefail
cd "$(dirname "$0")/.."
MAPPINGS=${MAPPINGS:-1000000}
ROUNDS=${ROUNDS:-3}
for t in thin_restore thin_dump /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "bench_dmthin: $t is missing (apt-get install -y thin-provisioning-tools time)" >&2; exit 1; }
done
cargo build --release --bin thinpool >/dev/null 2>&1 || cargo build --release --bin thinpool
T=$PWD/target/release/thinpool
DIR=$(mktemp -d -p "${BENCH_DIR:-${TMPDIR:-/var/tmp}}" thinpool-bench-dmthin.XXXXXX)
trap 'rm -rf "$DIR"' EXIT

awk -v n="$MAPPINGS" 'BEGIN {
  srand(1)
  a = int(n * 0.4); c = n - 2 * a
  printf "<superblock uuid=\"\" time=\"1\" transaction=\"1\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"%d\">\n", int(n * 1.5) + 1024
  data = 0
  # Runs of device 1 (and 2), then of device 3, each followed by a one-block gap in data.
  nr = 0; left = a; vb = 0
  while (left > 0) {
    len = (rand() < 0.5) ? 1 : 2 + int(rand() * 15); if (len > left) len = left
    ob[nr] = vb; db[nr] = data; ln[nr] = len; nr++
    vb += len + int(rand() * 3); data += len + 1; left -= len
  }
  for (d = 1; d <= 2; d++) {
    printf "  <device dev_id=\"%d\" mapped_blocks=\"%d\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n", d, a
    for (i = 0; i < nr; i++) {
      if (ln[i] == 1) printf "    <single_mapping origin_block=\"%d\" data_block=\"%d\" time=\"0\"/>\n", ob[i], db[i]
      else printf "    <range_mapping origin_begin=\"%d\" data_begin=\"%d\" length=\"%d\" time=\"0\"/>\n", ob[i], db[i], ln[i]
    }
    print "  </device>"
  }
  printf "  <device dev_id=\"3\" mapped_blocks=\"%d\" transaction=\"0\" creation_time=\"1\" snap_time=\"1\">\n", c
  left = c; vb = 0
  while (left > 0) {
    len = (rand() < 0.5) ? 1 : 2 + int(rand() * 15); if (len > left) len = left
    if (len == 1) printf "    <single_mapping origin_block=\"%d\" data_block=\"%d\" time=\"1\"/>\n", vb, data
    else printf "    <range_mapping origin_begin=\"%d\" data_begin=\"%d\" length=\"%d\" time=\"1\"/>\n", vb, data, len
    vb += len + int(rand() * 3); data += len + 1; left -= len
  }
  print "  </device>"
  print "</superblock>"
}' > "$DIR/in.xml"
runs=$(grep -c "_mapping" "$DIR/in.xml")
echo "input: $MAPPINGS mappings in $runs runs, 3 devices (one a snapshot), $(du -h "$DIR/in.xml" | cut -f1) of XML"

# One timed step: wall seconds and max RSS (KiB) appended to $DIR/$1.
step() {
  local name=$1 out=$2; shift 2
  /usr/bin/time -f "%e %M" -o "$DIR/t" "$@"
  local t0; t0=$(date +%s.%N)
  sync -f "$out"
  local t1; t1=$(date +%s.%N)
  read -r e m < "$DIR/t"
  awk -v e="$e" -v a="$t0" -v b="$t1" -v m="$m" 'BEGIN { printf "%.3f %d\n", e + (b - a), m }' >> "$DIR/$name"
}

# Devices and mappings, without the superblock line and dm-thin's creation_time, which
# thinpool does not keep (docs/dmthin.md).
body() { tail -n +2 "$1" | sed 's/ creation_time="[0-9]*"//'; }
for r in $(seq "$ROUNDS"); do
  rm -f "$DIR/dm-meta" && truncate -s 1G "$DIR/dm-meta"
  step thin_restore "$DIR/dm-meta" thin_restore -q -i "$DIR/in.xml" -o "$DIR/dm-meta"
  rm -rf "$DIR/pool"
  step thinpool_restore "$DIR/pool/metadata" "$T" restore "$DIR/pool" -i "$DIR/in.xml" >/dev/null
  step thin_dump "$DIR/dm.xml" sh -c "thin_dump '$DIR/dm-meta' > '$DIR/dm.xml'"
  step thinpool_dump "$DIR/tp.xml" "$T" dump "$DIR/pool" -o "$DIR/tp.xml" >/dev/null
  cmp <(body "$DIR/in.xml") <(body "$DIR/dm.xml") >/dev/null || { echo "thin_dump differs from the input" >&2; exit 1; }
  cmp <(body "$DIR/in.xml") <(body "$DIR/tp.xml") >/dev/null || { echo "thinpool dump differs from the input" >&2; exit 1; }
done
"$T" check "$DIR/pool" >/dev/null

med() { sort -n "$DIR/$1" | awk '{ t[NR] = $1 } END { print t[int((NR + 1) / 2)] }'; }
rss() { sort -k2 -n "$DIR/$1" | tail -1 | awk '{ printf "%.0f", $2 / 1024 }'; }
all() { awk '{ printf "%s%s", s, $1; s = " / " }' "$DIR/$1"; }
printf "%-18s %10s %10s   %s\n" step "median s" "max RSS" "each round (s)"
for s in thin_restore thinpool_restore thin_dump thinpool_dump; do
  printf "%-18s %10s %7s MiB   %s\n" "$s" "$(med $s)" "$(rss $s)" "$(all $s)"
done
awk -v a="$(med thinpool_restore)" -v b="$(med thin_restore)" -v c="$(med thinpool_dump)" -v d="$(med thin_dump)" 'BEGIN {
  printf "restore: thinpool / thin_restore = %.3f (target <= 0.2)\n", a / b
  printf "dump:    thinpool / thin_dump    = %.3f (target <= 1.0)\n", c / d
}'
