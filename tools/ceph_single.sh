#!/usr/bin/env bash
# A throwaway single-node Ceph cluster on loopback, for `thinpool sync` tests and trials:
# one monitor, one OSD (bluestore on a sparse 4 GiB file), no auth, pool size 1, and an RBD
# pool named "rbd". Everything lives under DIR; nothing else on the machine is touched.
#
#   tools/ceph_single.sh up DIR     # ~15 s; then: export CEPH_CONF=DIR/ceph.conf
#   tools/ceph_single.sh down DIR   # stops the daemons it started (by their pid files)
#
# Needs Debian's ceph-mon, ceph-osd and ceph-common (tools/test.sh installs them).
set -euo pipefail
cmd=${1:?usage: ceph_single.sh up|down DIR}
dir=${2:?usage: ceph_single.sh up|down DIR}

down() {
    for p in "$dir"/run/*.pid; do
        [ -e "$p" ] || continue
        pid=$(cat "$p")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$p"
    done
}

case $cmd in
down)
    down
    exit 0
    ;;
up) ;;
*)
    echo "usage: ceph_single.sh up|down DIR" >&2
    exit 2
    ;;
esac

for t in ceph-mon ceph-osd ceph ceph-authtool monmaptool rbd; do
    command -v $t >/dev/null || { echo "ceph_single.sh: $t is required" >&2; exit 1; }
done
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ -e "$dir/ceph.conf" ]; then
    echo "ceph_single.sh: $dir already holds a cluster" >&2
    exit 1
fi
mkdir -p "$dir/run" "$dir/log" "$dir/mon" "$dir/osd"
fsid=$(cat /proc/sys/kernel/random/uuid)
# Ports: the monitor's defaults (3300 for msgr2, 6789 for v1) unless given.
v2=${CEPH_MON_PORT_V2:-3300}
v1=${CEPH_MON_PORT_V1:-6789}
cat >"$dir/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$v2,v1:127.0.0.1:$v1
mon initial members = a
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
run dir = $dir/run
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
pid file = $dir/run/\$name.pid
keyring = $dir/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon data avail warn = 1
mon data avail crit = 1
[mon]
mon data = $dir/mon/\$cluster-\$id
[osd]
osd data = $dir/osd/\$cluster-\$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 4294967296
bluestore block db create = false
bluestore block wal create = false
bluestore fsck on mount = false
osd memory target = 1073741824
bluestore cache autotune = false
bluestore cache size = 268435456
EOF
export CEPH_CONF=$dir/ceph.conf
trap 'echo "ceph_single.sh: bring-up failed; logs in $dir/log" >&2; down' ERR
ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$v2,v1:127.0.0.1:$v1]" "$dir/monmap" >/dev/null
ceph-mon --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring"
ceph-mon -i a
wait_for() {
    local what=$1
    shift
    for _ in $(seq 120); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    echo "ceph_single.sh: $what did not come up within 60 s" >&2
    return 1
}
wait_for "the monitor" timeout 5 ceph -s
uuid=$(cat /proc/sys/kernel/random/uuid)
id=$(timeout 30 ceph osd new "$uuid")
mkdir -p "$dir/osd/ceph-$id"
ceph-osd -i "$id" --mkfs --osd-uuid "$uuid" >/dev/null 2>&1
ceph-osd -i "$id"
osd_up() { timeout 5 ceph osd stat | grep -q '1 up'; }
wait_for "the OSD" osd_up
timeout 60 ceph osd pool create rbd 8 8 >/dev/null 2>&1
timeout 60 rbd pool init rbd
trap - ERR
echo "$dir/ceph.conf"
