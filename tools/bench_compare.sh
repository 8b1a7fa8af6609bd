#!/usr/bin/env bash
# One fio job, side by side and interleaved in one run, against four targets: (a) the raw file
# itself (fio io_uring, O_DIRECT: the disk's ceiling), (b) `qemu-nbd -f raw`, (c) `qemu-nbd -f
# qcow2`, (d) `thinpool serve` (64 KiB blocks, 1 GiB thin volumes), in two cache modes, each its
# own table: "page cache" (qemu-nbd --cache=writeback --aio=io_uring vs `thinpool serve`) and
# "O_DIRECT" (qemu-nbd --cache=none --aio=io_uring vs `thinpool serve --direct`, when the build
# has it). Each workload runs on every target back to back before the next workload starts.
#
# Every cell is IOPS · p99 · max completion latency (fio clat, ms). The fill row writes the whole
# GiB of a fresh file/volume and leaves it fully written: the rows marked provisioned then run on
# it. The first-write row uses a second fresh file/volume. The last row takes a snapshot first
# (thinpool: `thinpool snapshot` through the control socket; qcow2: qemu-storage-daemon with QMP
# `blockdev-snapshot-internal-sync`, since qemu-nbd cannot snapshot a live image; raw: none).
# `sync` runs (untimed) before every fio job so no job pays for the previous one's dirty pages,
# and every job that writes fresh data first follows the same untimed 1 GiB of buffered writes
# to a scratch file (the kernel throttles a buffered writer that follows another: without
# this, whichever target filled first through the page cache won).
#
# Usage: tools/bench_compare.sh [SECONDS]   (default 10 s per time-based job; BENCH_DIR=dir for
# scratch, default /var/tmp: a real disk, not tmpfs; it needs about 10 GiB free)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
if ! [[ $secs =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: tools/bench_compare.sh [SECONDS]" >&2
  exit 2
fi
for tool in fio qemu-nbd qemu-img qemu-storage-daemon jq python3 timeout; do
  command -v "$tool" >/dev/null || { echo "bench_compare: $tool is not installed" >&2; exit 1; }
done
base=${BENCH_DIR:-/var/tmp}
fstype=$(df -PT "$base" | awk 'NR == 2 { print $2 }')
case $fstype in
  tmpfs | ramfs) echo "bench_compare: $base is $fstype; set BENCH_DIR to a real disk" >&2; exit 1 ;;
esac
cargo build --release -q
bin=$PWD/target/release/thinpool
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
has_direct=0
if "$bin" serve --help | grep -q -- --direct; then has_direct=1; fi

work=$(mktemp -d "$base/thinpool-compare.XXXXXX")
pids=() # every daemon this script started and has not stopped yet
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
  echo "bench_compare: $*" >&2
  exit 1
}
spawn() { # NAME CMD...: start a daemon, its output in $work/NAME.log; its PID in $spawned
  local name=$1
  shift
  "$@" >"$work/$name.log" 2>&1 &
  spawned=$!
  pids+=("$spawned")
}
stop() { # PID: SIGTERM one daemon of ours and wait for it
  local p keep=()
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}
wait_sock() { # PATH PID NAME: wait until the daemon listens on PATH
  local _
  for _ in $(seq 200); do
    [ -S "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || die "$3 exited: $(tail -3 "$work/$3.log")"
    sleep 0.05
  done
  die "$3 did not create $1 in 10 s"
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# QMP client: SOCKET COMMAND-JSON; prints "start_ns end_ns reply" around the command alone.
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
t0 = time.time_ns()
f.write((sys.argv[2] + "\n").encode())
m = reply()
t1 = time.time_ns()
print(t0, t1, json.dumps(m))
sys.exit(0 if "return" in m else 1)
EOF

modes=(pc dio)
declare -A mode_title=([pc]="page cache" [dio]="O_DIRECT")
declare -A qcache=([pc]=writeback [dio]=none)
declare -A qdirect=([pc]=off [dio]=on)
declare -A pid_of # daemon PIDs by name
declare -A snap_ms # snapshot command latency by target

# --- targets ------------------------------------------------------------------------------------
truncate -s 1G "$work/file-fill.raw" "$work/file-fw.raw"
for m in "${modes[@]}"; do
  for use in fill fw; do
    truncate -s 1G "$work/qraw-$m-$use.raw"
    qemu-img create -q -f qcow2 "$work/qcow-$m-$use.qcow2" 1G
    for kind in qraw qcow; do
      name=$kind-$m-$use
      fmt=raw img=$work/$name.raw
      [ "$kind" = qcow ] && fmt=qcow2 img=$work/$name.qcow2
      spawn "$name" qemu-nbd -f "$fmt" --cache="${qcache[$m]}" --aio=io_uring --persistent \
        --shared=8 -k "$work/$name.sock" "$img"
      pid_of[$name]=$spawned
    done
  done
  [ "$m" = dio ] && [ "$has_direct" = 0 ] && continue
  "$bin" pool create "$work/pool-$m" --size 8G --block-size 64K >/dev/null
  "$bin" create "$work/pool-$m" fill --size 1G >/dev/null
  "$bin" create "$work/pool-$m" fw --size 1G >/dev/null
  flags=()
  [ "$m" = dio ] && flags=(--direct)
  spawn "thin-$m" "$bin" serve "$work/pool-$m" "${flags[@]}"
  pid_of[thin-$m]=$spawned
done
for name in "${!pid_of[@]}"; do
  case $name in
    thin-*) wait_sock "$work/pool-${name#thin-}/nbd.sock" "${pid_of[$name]}" "$name" ;;
    *) wait_sock "$work/$name.sock" "${pid_of[$name]}" "$name" ;;
  esac
done

targets=(file qraw-pc qcow-pc thin-pc qraw-dio qcow-dio)
[ "$has_direct" = 1 ] && targets+=(thin-dio)
declare -A label=([file]="raw file (fio io_uring, O_DIRECT)" [qraw-pc]="qemu-nbd raw"
  [qcow-pc]="qemu-nbd qcow2" [thin-pc]="thinpool serve" [qraw-dio]="qemu-nbd raw"
  [qcow-dio]="qemu-nbd qcow2" [thin-dio]="thinpool serve --direct")

# --- workloads: label | kind (fill, fresh, prov, snap) | rw | bs | iodepth | extra fio options ---
workloads=(
  "1 GiB sequential fill, 1M qd8 (fresh)|fill|write|1M|8|"
  "4k randwrite qd16, first write (fresh)|fresh|randwrite|4k|16|"
  "4k randread qd1|prov|randread|4k|1|"
  "4k randread qd16|prov|randread|4k|16|"
  "4k randwrite qd1|prov|randwrite|4k|1|"
  "4k randwrite qd16|prov|randwrite|4k|16|"
  "1M read qd8|prov|read|1M|8|"
  "1M write qd8|prov|write|1M|8|"
  "4k randrw 70/30 qd16|prov|randrw|4k|16|--rwmixread=70 --unified_rw_reporting=mixed"
  "4k randwrite qd16, fsync every 16|prov|randwrite|4k|16|--fsync=16"
  "4k randwrite qd16 after a snapshot|snap|randwrite|4k|16|"
)

snapshot() { # TARGET: take the snapshot the "snap" row runs after; prints the export to use
  local t=$1 m=${1#*-} t0 t1 out
  case $t in
    thin-*)
      t0=$(date +%s%N)
      "$bin" snapshot "$work/pool-$m" fill snap >"$work/snap-$t.out" 2>&1 ||
        { log "thinpool snapshot failed: $(cat "$work/snap-$t.out")"; return 1; }
      t1=$(date +%s%N)
      snap_ms[$t]=$(((t1 - t0) / 1000)) # µs
      ;;
    qcow-*)
      # qemu-nbd holds the image's lock and has no snapshot command: hand the same image
      # to qemu-storage-daemon with the same cache mode, and snapshot it over QMP.
      stop "${pid_of[qcow-$m-fill]}"
      spawn "qsd-$m" qemu-storage-daemon \
        --blockdev "driver=file,node-name=file,filename=$work/qcow-$m-fill.qcow2,cache.direct=${qdirect[$m]},aio=io_uring" \
        --blockdev driver=qcow2,node-name=disk,file=file \
        --nbd-server "addr.type=unix,addr.path=$work/qsd-$m.sock" \
        --export type=nbd,id=e,node-name=disk,name=disk,writable=on \
        --chardev "socket,path=$work/qmp-$m.sock,server=on,wait=off,id=qmp" --monitor chardev=qmp
      pid_of[qsd-$m]=$spawned
      wait_sock "$work/qsd-$m.sock" "$spawned" "qsd-$m"
      wait_sock "$work/qmp-$m.sock" "$spawned" "qsd-$m"
      out=$(python3 "$work/qmp.py" "$work/qmp-$m.sock" \
        '{"execute":"blockdev-snapshot-internal-sync","arguments":{"device":"disk","name":"snap"}}') ||
        { log "QMP snapshot failed: $out"; return 1; }
      read -r t0 t1 _ <<<"$out"
      snap_ms[$t]=$(((t1 - t0) / 1000))
      ;;
  esac
}

target_args() { # TARGET KIND: fio options that address the target
  local t=$1 use=fill m=${1#*-}
  [ "$2" = fresh ] && use=fw
  case $t in
    file) echo "--ioengine=io_uring --direct=1 --filename=$work/file-$use.raw" ;;
    thin-*) echo "--ioengine=nbd --uri=nbd+unix:///$use?socket=$work/pool-$m/nbd.sock" ;;
    qcow-*) if [ "$2" = snap ]; then
      echo "--ioengine=nbd --uri=nbd+unix:///disk?socket=$work/qsd-$m.sock"
    else
      echo "--ioengine=nbd --uri=nbd+unix:///?socket=$work/qcow-$m-$use.sock"
    fi ;;
    *) echo "--ioengine=nbd --uri=nbd+unix:///?socket=$work/$t-$use.sock" ;;
  esac
}

declare -A res # "W,TARGET" -> "iops p99_ns max_ns", or "!reason"
n=0
for w in "${workloads[@]}"; do
  IFS='|' read -r wlabel kind rw bs qd extra <<<"$w"
  case $rw in randrw) dir="mixed" ;; *read) dir="read" ;; *) dir="write" ;; esac
  if [ "$kind" = fill ]; then
    timing=()
    limit=900
  else
    timing=(--runtime="$secs" --time_based)
    limit=$((secs + 120))
  fi
  for t in "${targets[@]}"; do
    if [ "$kind" = snap ] && ! snapshot "$t"; then
      res[$n,$t]="!snapshot failed"
      continue
    fi
    out=$work/fio-$n-$t.json
    detail=
    read -ra targs <<<"$(target_args "$t" "$kind")"
    read -ra xopts <<<"$extra"
    if [ "$kind" = fill ] || [ "$kind" = fresh ]; then
      # Buffered writers that follow a GiB of buffered writes are throttled by the kernel
      # (a fill run first made 855 IOPS, the same fill fourth 258): every fresh-write job
      # follows the same 1 GiB of buffered writes to a scratch file, so no target gains
      # from its place in the order.
      dd if=/dev/zero of="$work/prep" bs=1M count=1024 status=none
      sync
      rm -f "$work/prep"
    fi
    sync
    if timeout -k 10 "$limit" fio --name=b --numjobs=1 --size=1g --rw="$rw" --bs="$bs" \
      --iodepth="$qd" "${timing[@]}" "${xopts[@]}" "${targs[@]}" \
      --output-format=json --output="$out" >"$out.err" 2>&1; then
      res[$n,$t]=$(jq -r --arg d "$dir" '.jobs[0] | if .error != 0 then "!fio error \(.error)"
        else .[$d] | "\(.iops) \(.clat_ns.percentile["99.000000"]) \(.clat_ns.max)" end' "$out")
    else
      rc=$?
      res[$n,$t]="!fio exit $rc"
      [ "$rc" = 124 ] && res[$n,$t]="!timed out after $limit s"
      log "fio on $t failed ($rc): $(tail -2 "$out.err" | tr '\n' ' ')"
    fi
    if [ -s "$out" ]; then
      detail=$(jq -r --arg d "$dir" '.jobs[0][$d] | "slat mean \(.slat_ns.mean / 1000 | floor) µs,
        clat mean \(.clat_ns.mean / 1000 | floor) µs"' "$out" 2>/dev/null | tr -s ' \n' ' ') || detail=
    fi
    log "$wlabel · $t: ${res[$n,$t]} ($detail)"
  done
  n=$((n + 1))
done

# Peak RSS before the servers go away.
declare -A hwm
for m in "${modes[@]}"; do
  p=${pid_of[thin-$m]:-}
  [ -n "$p" ] || continue
  if kill -0 "$p" 2>/dev/null; then
    hwm[$m]=$(awk '/^VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$p/status")
  else
    log "thinpool serve ($m) is gone: $(tail -3 "$work/thin-$m.log")"
  fi
done

# --- tables --------------------------------------------------------------------------------------
fmt_cell() { # "iops p99ns maxns" -> "12,345 · 1.23 · 24.5"
  case $1 in "!"*) echo "${1#!}"; return ;; esac
  awk -v c="$1" '
    function ms(ns,  v) {
      v = ns / 1e6
      if (v < 10) return sprintf("%.2f", v)
      if (v < 100) return sprintf("%.1f", v)
      return sprintf("%.0f", v)
    }
    function th(x,  s, r) {
      s = sprintf("%d", x + 0.5)
      r = ""
      while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) }
      return s r
    }
    BEGIN { split(c, a, " "); printf "%s · %s · %s", th(a[1]), ms(a[2]), ms(a[3]) }'
}
ratio() { # A B FIELD: A's field / B's field, 2 decimals
  case "$1$2" in *"!"*) echo "—"; return ;; esac
  awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN { split(a, x, " "); split(b, y, " ")
    if (y[f] > 0) printf "%.2f", x[f] / y[f]; else print "—" }'
}
echo
echo "bench_compare: thinpool $rev, $secs s per time-based job, $(nproc) cores, scratch $base ($fstype)"
echo "$(fio --version), $(qemu-nbd --version | head -1)"
echo "Each cell: IOPS · p99 ms · max ms (fio completion latency). 1 GiB file/volume per target."
for m in "${modes[@]}"; do
  thin=thin-$m
  echo
  if [ "$m" = pc ]; then
    echo "### page cache: qemu-nbd --cache=writeback --aio=io_uring vs thinpool serve (default)"
  else
    echo "### O_DIRECT: qemu-nbd --cache=none --aio=io_uring vs thinpool serve --direct"
  fi
  echo
  cols=(file "qraw-$m" "qcow-$m")
  [ -n "${pid_of[$thin]:-}" ] && cols+=("$thin")
  hdr="| workload |"
  sep="|---|"
  for t in "${cols[@]}"; do
    hdr+=" ${label[$t]} |"
    sep+="---|"
  done
  if [ -n "${pid_of[$thin]:-}" ]; then
    hdr+=" thinpool / qcow2 IOPS | thinpool / raw IOPS | thinpool / raw p99 |"
    sep+="---|---|---|"
  fi
  echo "$hdr"
  echo "$sep"
  n=0
  for w in "${workloads[@]}"; do
    IFS='|' read -r wlabel kind _ <<<"$w"
    [ "$kind" = prov ] && wlabel+=" (provisioned)"
    [ "$kind" = snap ] && wlabel+=" (raw: no snapshot; qcow2: qemu-storage-daemon)"
    line="| $wlabel |"
    for t in "${cols[@]}"; do line+=" $(fmt_cell "${res[$n,$t]}") |"; done
    if [ -n "${pid_of[$thin]:-}" ]; then
      line+=" $(ratio "${res[$n,$thin]}" "${res[$n,qcow-$m]}" 1) |"
      line+=" $(ratio "${res[$n,$thin]}" "${res[$n,qraw-$m]}" 1) |"
      line+=" $(ratio "${res[$n,$thin]}" "${res[$n,qraw-$m]}" 2) |"
    fi
    echo "$line"
    n=$((n + 1))
  done
  echo
  [ -z "${pid_of[$thin]:-}" ] && echo "thinpool serve --direct: not in this build"
  [ -n "${snap_ms[$thin]:-}" ] &&
    printf 'snapshot before the last row: thinpool snapshot (CLI, through the control socket) %.1f ms\n' \
      "$(awk -v u="${snap_ms[$thin]}" 'BEGIN { print u / 1000 }')"
  [ -n "${snap_ms[qcow-$m]:-}" ] &&
    printf 'snapshot before the last row: qcow2 QMP blockdev-snapshot-internal-sync %.1f ms\n' \
      "$(awk -v u="${snap_ms[qcow-$m]}" 'BEGIN { print u / 1000 }')"
done
echo
echo "The raw file column is one measurement per row, shown in both tables."
for m in "${modes[@]}"; do
  [ -n "${hwm[$m]:-}" ] && echo "peak RSS of thinpool serve (${mode_title[$m]}, VmHWM): ${hwm[$m]}"
done
echo "total run time: $SECONDS s"
