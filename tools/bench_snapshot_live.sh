#!/usr/bin/env bash
# A snapshot under load: fio 4k randwrite QD16 through NBD for 16 s against a provisioned
# (fully written) 1 GiB target, with a snapshot taken 6 s in; IOPS per second before and after.
# First `thinpool serve` (64 KiB blocks, defaults) with `thinpool snapshot` through the control
# socket (timed with date +%s%N around the command), then qemu-storage-daemon exporting a qcow2
# image over NBD (page cache, aio=io_uring, as thinpool's default) with a QMP
# `blockdev-snapshot-internal-sync` (timed around the QMP command alone). Both targets are
# provisioned by an untimed sequential fill, then `sync`.
#
# fio runs 17 s: it does not log the last (partial) window, so this gives the 16 one-second
# samples that the report shows.
#
# Usage: tools/bench_snapshot_live.sh   (BENCH_DIR=dir for scratch, default /var/tmp; a real disk)
set -euo pipefail
cd "$(dirname "$0")/.."
samples=16 # seconds reported
snap_at=6  # seconds after fio starts
after=10   # seconds averaged after the snapshot
for tool in fio qemu-img qemu-storage-daemon jq python3 timeout; do
  command -v "$tool" >/dev/null || { echo "bench_snapshot_live: $tool is not installed" >&2; exit 1; }
done
base=${BENCH_DIR:-/var/tmp}
fstype=$(df -PT "$base" | awk 'NR == 2 { print $2 }')
case $fstype in
  tmpfs | ramfs) echo "bench_snapshot_live: $base is $fstype; set BENCH_DIR to a real disk" >&2; exit 1 ;;
esac
cargo build --release -q
bin=$PWD/target/release/thinpool
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

work=$(mktemp -d "$base/thinpool-snaplive.XXXXXX")
pids=() # every process this script started in the background and has not stopped yet
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '[%4d s] %s\n' "$SECONDS" "$*" >&2; }
die() {
  echo "bench_snapshot_live: $*" >&2
  exit 1
}
spawn() { # NAME CMD...: start in the background, output in $work/NAME.log, PID in $spawned
  local name=$1
  shift
  "$@" >"$work/$name.log" 2>&1 &
  spawned=$!
  pids+=("$spawned")
}
reap() { # PID: wait for one of our background processes (after kill, or when it ends)
  local p keep=() rc=0
  wait "$1" || rc=$?
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
  return "$rc"
}
wait_sock() { # PATH PID NAME
  local _
  for _ in $(seq 200); do
    [ -S "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || die "$3 exited: $(tail -3 "$work/$3.log")"
    sleep 0.05
  done
  die "$3 did not create $1 in 10 s"
}
sleep_until() { # EPOCH_NS
  local left=$(($1 - $(date +%s%N)))
  if [ "$left" -gt 0 ]; then sleep "$(awk -v n="$left" 'BEGIN { printf "%.3f", n / 1e9 }')"; fi
}

# QMP client: SOCKET COMMAND-JSON [EPOCH_NS]: negotiates at once, sends the command at EPOCH_NS;
# prints "start_ns end_ns reply", timed around the command alone.
cat >"$work/qmp.py" <<'EOF'
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rwb", buffering=0)
def reply():
    while True:
        m = json.loads(f.readline())
        if "return" in m or "error" in m:
            return m
json.loads(f.readline())  # greeting
f.write(b'{"execute":"qmp_capabilities"}\n')
reply()
if len(sys.argv) > 3:
    time.sleep(max(0.0, (int(sys.argv[3]) - time.time_ns()) / 1e9))
t0 = time.time_ns()
f.write((sys.argv[2] + "\n").encode())
m = reply()
t1 = time.time_ns()
print(t0, t1, json.dumps(m))
sys.exit(0 if "return" in m else 1)
EOF

fill() { # URI: untimed sequential fill of the whole GiB
  fio --name=fill --ioengine=nbd --uri="$1" --rw=write --bs=1M --iodepth=8 --size=1g \
    --output-format=json --output="$work/fill.json" >"$work/fill.err" 2>&1 ||
    die "fill of $1 failed: $(tail -2 "$work/fill.err")"
  sync
}
load() { # NAME URI: start the measured fio job in the background (PID in $fio_pid) and wait
  # until its I/O starts (epoch ns in $job_start: fio's prerun hook runs right before it, and
  # writes NAME.prerun.txt in fio's working directory)
  spawn "fio-$1" env -C "$work" timeout -k 10 60 fio --name="$1" --ioengine=nbd --uri="$2" \
    --rw=randwrite --bs=4k --iodepth=16 --size=1g --runtime=$((samples + 1)) --time_based \
    --write_iops_log="$work/$1" --log_avg_msec=1000 --log_unix_epoch=1 \
    --exec_prerun='date +%s%N' --output-format=json --output="$work/$1.json"
  fio_pid=$spawned
  local _
  job_start=
  for _ in $(seq 1000); do
    job_start=$(cat "$work/$1.prerun.txt" 2>/dev/null || true)
    [ -n "$job_start" ] && return 0
    kill -0 "$fio_pid" 2>/dev/null || die "fio against $1 exited: $(tail -3 "$work/fio-$1.log")"
    sleep 0.01
  done
  die "fio against $1 did not start in 10 s"
}

# --- thinpool ------------------------------------------------------------------------------------
"$bin" pool create "$work/pool" --size 4G --block-size 64K >/dev/null
"$bin" create "$work/pool" vol --size 1G >/dev/null
spawn thin "$bin" serve "$work/pool"
thin_pid=$spawned
wait_sock "$work/pool/nbd.sock" "$thin_pid" thin
thin_uri="nbd+unix:///vol?socket=$work/pool/nbd.sock"
log "thinpool: provisioning the volume"
fill "$thin_uri"
log "thinpool: fio for $samples s, snapshot at $snap_at s"
load thin "$thin_uri"
sleep_until $((job_start + snap_at * 1000000000))
t0=$(date +%s%N)
"$bin" snapshot "$work/pool" vol snap >"$work/snap.out" 2>&1 ||
  die "thinpool snapshot failed: $(cat "$work/snap.out")"
t1=$(date +%s%N)
thin_snap=("$t0" "$t1")
reap "$fio_pid" || die "fio against thinpool failed: $(tail -3 "$work/fio-thin.log")"
"$bin" list "$work/pool" | grep -q '^snap ' || die "the thinpool snapshot is not in the pool"
thin_hwm=$(awk '/^VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$thin_pid/status")
kill "$thin_pid"
reap "$thin_pid" || log "thinpool serve exited with $?"

# --- qemu-storage-daemon + qcow2 -----------------------------------------------------------------
img=$work/disk.qcow2
qemu-img create -q -f qcow2 "$img" 1G
spawn qsd qemu-storage-daemon \
  --blockdev "driver=file,node-name=file,filename=$img,cache.direct=off,aio=io_uring" \
  --blockdev driver=qcow2,node-name=disk,file=file \
  --nbd-server "addr.type=unix,addr.path=$work/qsd.sock" \
  --export type=nbd,id=e,node-name=disk,name=disk,writable=on \
  --chardev "socket,path=$work/qmp.sock,server=on,wait=off,id=qmp" --monitor chardev=qmp
qsd_pid=$spawned
wait_sock "$work/qsd.sock" "$qsd_pid" qsd
wait_sock "$work/qmp.sock" "$qsd_pid" qsd
qsd_uri="nbd+unix:///disk?socket=$work/qsd.sock"
log "qcow2: provisioning the image"
fill "$qsd_uri"
log "qcow2: fio for $samples s, snapshot at $snap_at s"
load qcow "$qsd_uri"
spawn qmp python3 "$work/qmp.py" "$work/qmp.sock" \
  '{"execute":"blockdev-snapshot-internal-sync","arguments":{"device":"disk","name":"snap"}}' \
  $((job_start + snap_at * 1000000000))
qmp_pid=$spawned
reap "$qmp_pid" || die "QMP snapshot failed: $(cat "$work/qmp.log")"
read -r t0 t1 _ <"$work/qmp.log"
qcow_snap=("$t0" "$t1")
reap "$fio_pid" || die "fio against qcow2 failed: $(tail -3 "$work/fio-qcow.log")"
kill "$qsd_pid"
reap "$qsd_pid" || log "qemu-storage-daemon exited with $?"
qemu-img snapshot -l "$img" | grep -qw snap || die "the qcow2 image has no snapshot 'snap'"

# --- report --------------------------------------------------------------------------------------
# Each log line: epoch ms at the end of a 1 s window, IOPS in it, ... The job started 1 s before
# the first window ended; sample i covers seconds (i-1, i] of the job.
start_ms() { awk -F, 'NR == 1 { printf "%.0f", $1 - 1000; exit }' "$work/$1_iops.1.log"; }
series() { awk -F, -v n="$samples" 'NR <= n { printf "%d\n", $2 }' "$work/$1_iops.1.log"; }
thin_start=$(start_ms thin)
qcow_start=$(start_ms qcow)
mapfile -t thin_iops < <(series thin)
mapfile -t qcow_iops < <(series qcow)
rel() { awk -v t="$1" -v s="$2" 'BEGIN { printf "%.2f", (t / 1e6 - s) / 1000 }'; } # NS START_MS
dur() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }
thin_at=$(rel "${thin_snap[0]}" "$thin_start")
qcow_at=$(rel "${qcow_snap[0]}" "$qcow_start")
# The ten samples from the one holding the snapshot's start.
first() { awk -v a="$1" 'BEGIN { printf "%d", int(a) + 1 }'; }
thin_k=$(first "$thin_at")
qcow_k=$(first "$qcow_at")
mean() { # FROM TO VALUES...: mean of samples FROM..TO (1-based) that exist; "mean (count)"
  local from=$1 to=$2
  shift 2
  printf '%s\n' "$@" | awk -v a="$from" -v b="$to" 'NR >= a && NR <= b { s += $1; n++ }
    END { if (n) printf "%.0f %d", s / n, n; else print "0 0" }'
}
read -r thin_before _ <<<"$(mean 1 $((thin_k - 1)) "${thin_iops[@]}")"
read -r qcow_before _ <<<"$(mean 1 $((qcow_k - 1)) "${qcow_iops[@]}")"
read -r thin_after thin_n <<<"$(mean "$thin_k" $((thin_k + after - 1)) "${thin_iops[@]}")"
read -r qcow_after qcow_n <<<"$(mean "$qcow_k" $((qcow_k + after - 1)) "${qcow_iops[@]}")"

echo
echo "bench_snapshot_live: thinpool $rev, $(nproc) cores, scratch $base ($fstype)"
echo "$(fio --version) 4k randwrite qd16 through NBD, 1 GiB provisioned target, snapshot at ${snap_at} s"
echo "thinpool serve (defaults): thinpool snapshot took $(dur "${thin_snap[@]}") ms" \
  "(CLI through the control socket), started at ${thin_at} s"
echo "qemu-storage-daemon + qcow2 (cache.direct=off, aio=io_uring): QMP" \
  "blockdev-snapshot-internal-sync took $(dur "${qcow_snap[@]}") ms, started at ${qcow_at} s"
echo
echo "| second | thinpool IOPS | qcow2 IOPS |"
echo "|---|---|---|"
for ((i = 1; i <= samples; i++)); do
  mark=""
  [ "$i" = "$thin_k" ] && mark+=" (thinpool snapshot)"
  [ "$i" = "$qcow_k" ] && mark+=" (qcow2 snapshot)"
  echo "| $((i - 1))–$i$mark | ${thin_iops[i - 1]:-—} | ${qcow_iops[i - 1]:-—} |"
done
echo
echo "mean IOPS before the snapshot: thinpool $thin_before, qcow2 $qcow_before"
echo "mean IOPS in the $after s from the snapshot: thinpool $thin_after ($thin_n samples)," \
  "qcow2 $qcow_after ($qcow_n samples)"
awk -v a="$thin_after" -v b="$qcow_after" 'BEGIN {
  if (b > 0) printf "ratio thinpool / qcow2 after the snapshot: %.2f (target >= 2)\n", a / b }'
echo "fio totals: thinpool $(jq '.jobs[0].write.iops | floor' "$work/thin.json") IOPS," \
  "qcow2 $(jq '.jobs[0].write.iops | floor' "$work/qcow.json") IOPS (whole run)," \
  "max latency thinpool $(jq '.jobs[0].write.clat_ns.max / 1e6 | floor' "$work/thin.json") ms," \
  "qcow2 $(jq '.jobs[0].write.clat_ns.max / 1e6 | floor' "$work/qcow.json") ms"
echo "peak RSS of thinpool serve (VmHWM): $thin_hwm"
echo "total run time: $SECONDS s"
