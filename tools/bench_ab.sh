#!/usr/bin/env bash
# A/B benchmark of two thinpool binaries through `serve` (fio's NBD engine), runs
# alternating old, new, old, new... so drift of the machine hits both alike.
#
#   tools/bench_ab.sh OLD_BIN NEW_BIN [ROUNDS]
#
# Workloads (each on a fresh pool, 1 GiB volume, 64 KiB blocks, page cache, default 1 s
# commit interval; SECS seconds each, default 8):
#   fill      1M sequential write qd8 into a fresh volume (every block newly mapped)
#   first4k   4k random write qd16 into a fresh volume (allocation path)
#   write1m   1M sequential write qd8 over a provisioned volume (in place)
#   rand4k    4k random write qd16 over a provisioned volume (in place)
# Prints one line per run (IOPS, p99 and max completion latency in ms) and, per workload and
# binary, the median IOPS and the worst max latency. SERVE_FLAGS is passed to `serve`;
# WORKLOADS (default "fill first4k write1m rand4k") picks some. Within a round the binary
# that runs first alternates too, so neither always follows the other.
set -euo pipefail
old=${1:?usage: bench_ab.sh OLD_BIN NEW_BIN [ROUNDS]}
new=${2:?usage: bench_ab.sh OLD_BIN NEW_BIN [ROUNDS]}
rounds=${3:-3}
secs=${SECS:-8}
for t in fio jq; do
    command -v $t >/dev/null || { echo "bench_ab.sh: $t is required" >&2; exit 1; }
done
work=$(mktemp -d /var/tmp/bench_ab.XXXX)
sp=
cleanup() {
    [ -n "$sp" ] && kill "$sp" 2>/dev/null && wait "$sp" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# run BIN WORKLOAD -> "iops p99_ms max_ms"
run() {
    local bin=$1 w=$2 d
    d=$(mktemp -d "$work/r.XXXX")
    "$bin" pool create "$d/p" --size 8G --block-size 64K >/dev/null
    "$bin" create "$d/p" v --size 1G >/dev/null
    # shellcheck disable=SC2086
    "$bin" serve "$d/p" --socket "$d/s" ${SERVE_FLAGS:-} >"$d/log" 2>&1 &
    sp=$!
    for _ in $(seq 200); do [ -S "$d/s" ] && break; sleep 0.05; done
    [ -S "$d/s" ] || { echo "serve did not start: $(cat "$d/log")" >&2; exit 1; }
    local uri="nbd+unix:///v?socket=$d/s" rw bs qd
    case $w in
        fill) rw=write bs=1M qd=8 ;;
        first4k) rw=randwrite bs=4k qd=16 ;;
        write1m) rw=write bs=1M qd=8 ;;
        rand4k) rw=randwrite bs=4k qd=16 ;;
    esac
    case $w in
        write1m | rand4k)
            fio --name=prefill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 \
                --size=1g >/dev/null
            sync
            ;;
    esac
    local extra=(--time_based --runtime="$secs")
    # A fill stops when the volume is full: every write maps a new block.
    [ "$w" = fill ] && extra=()
    fio --name=b --ioengine=nbd --uri="$uri" --rw=$rw --bs=$bs --iodepth=$qd --size=1g \
        --randrepeat=0 "${extra[@]}" --output-format=json >"$d/o.json" 2>/dev/null
    kill "$sp"
    wait "$sp" 2>/dev/null || true
    sp=
    sed -n '/^{/,$p' "$d/o.json" | jq -r '.jobs[0].write |
        "\(.iops|floor) \(.clat_ns.percentile["99.000000"]/1e6) \(.clat_ns.max/1e6)"'
    rm -rf "$d"
}

results="$work/results"
: >"$results"
workloads=${WORKLOADS:-fill first4k write1m rand4k}
for r in $(seq "$rounds"); do
    order="old new"
    [ $((r % 2)) = 0 ] && order="new old"
    for w in $workloads; do
        for side in $order; do
            bin=$old
            [ $side = new ] && bin=$new
            line=$(run "$bin" $w)
            echo "$w $side $line" >>"$results"
            printf '%-8s round %d %-3s %8s IOPS  p99 %8.2f ms  max %8.2f ms\n' \
                $w "$r" $side $line
        done
    done
done
echo
echo "workload  binary  median IOPS  worst max (ms)"
for w in $workloads; do
    for side in old new; do
        awk -v w=$w -v s=$side '$1 == w && $2 == s { print $3, $5 }' "$results" |
            sort -n | awk -v w=$w -v s=$side '
                { iops[NR] = $1; if ($2 > worst) worst = $2 }
                END { printf "%-9s %-7s %11d  %14.2f\n", w, s, iops[int((NR + 1) / 2)], worst }'
    done
done
