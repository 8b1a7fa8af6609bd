#!/usr/bin/env bash
# fio over NBD, side by side in one run: `thinpool serve` (thin volume, 64 KiB blocks) vs
# `qemu-nbd` on a raw file, twice: with `--cache=writeback` (the page cache, as thinpool
# uses it: the like-for-like comparison) and with `--cache=none --aio=native` (O_DIRECT).
# Usage: tools/bench_nbd.sh [SECONDS]   (BENCH_DIR picks the disk)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
cargo build --release -q
bin=$PWD/target/release/thinpool
work=$(mktemp -d "${BENCH_DIR:-/tmp}/thinpool-nbd.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT
"$bin" pool create "$work/pool" --size 4G >/dev/null
"$bin" create "$work/pool" vol --size 1G >/dev/null
"$bin" create "$work/pool" fresh --size 1G >/dev/null   # never written: first-touch writes
"$bin" serve "$work/pool" >/dev/null 2>&1 &
truncate -s 1G "$work/raw.img" "$work/direct.img" "$work/fresh.img" "$work/fresh-direct.img"
qemu-nbd -f raw --cache=writeback --persistent --shared=8 -k "$work/qemu.sock" "$work/raw.img" &
qemu-nbd -f raw --cache=none --aio=native --persistent --shared=8 -k "$work/direct.sock" \
  "$work/direct.img" &
qemu-nbd -f raw --cache=writeback --persistent --shared=8 -k "$work/fq.sock" "$work/fresh.img" &
qemu-nbd -f raw --cache=none --aio=native --persistent --shared=8 -k "$work/fd.sock" \
  "$work/fresh-direct.img" &
for s in "$work/pool/nbd.sock" "$work/qemu.sock" "$work/direct.sock" "$work/fq.sock" \
  "$work/fd.sock"; do
  for _ in $(seq 100); do [ -S "$s" ] && break; sleep 0.1; done
done
run() { # uri rw bs
  fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth=16 --numjobs=2 \
      --size=256m --offset_increment=256m --runtime="$secs" --time_based --group_reporting \
      --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
    jq -r --arg rw "$2" 'if ($rw|test("read")) then .jobs[0].read else .jobs[0].write end
                          | "\(.iops|floor) IOPS \(.bw_bytes/1048576|floor) MiB/s"'
}
printf '%-14s %-26s %-26s %s\n' workload "thinpool serve" "qemu-nbd writeback" \
  "qemu-nbd O_DIRECT"
row() { # label thin-export qemu-socket direct-socket rw bs: one workload on all three
  t=$(run "nbd+unix:///$2?socket=$work/pool/nbd.sock" "$5" "$6")
  q=$(run "nbd+unix:///?socket=$work/$3.sock" "$5" "$6")
  d=$(run "nbd+unix:///?socket=$work/$4.sock" "$5" "$6")
  printf '%-14s %-26s %-26s %s\n' "$1" "$t" "$q" "$d"
}
# First-touch random writes (into never-written blocks of the thin volume and sparse files).
row "fresh rw 4k" fresh fq fd randwrite 4k
for w in "write 1M" "randwrite 4k" "randread 4k" "read 1M"; do
  set -- $w
  row "$1 $2" vol qemu direct "$1" "$2"
done
