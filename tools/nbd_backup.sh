#!/usr/bin/env bash
# Incremental backup of a served volume through standard NBD tools only: the extents that
# differ from snapshot SNAP come from the export's `thinpool:changed:SNAP` metadata context
# (`nbdinfo --map`), and only those are read (`qemu-img convert` of a byte range through
# qemu's raw driver) and written into BACKUP, a raw
# image that held SNAP's contents (made by a full copy earlier, e.g. `nbdcopy URI-of-SNAP
# BACKUP` or `thinpool export POOL SNAP BACKUP`). Afterwards BACKUP holds the volume as it is
# now. Prints the bytes moved on the last line: `moved BYTES of SIZE`.
#
#   tools/nbd_backup.sh 'nbd+unix:///vm1?socket=POOL/nbd.sock' SNAP BACKUP
#
# Needs nbdinfo (libnbd-bin), qemu-img (qemu-utils) and jq. Take a new snapshot first and
# back up from it when the volume is being written meanwhile (then the copy is consistent).
set -euo pipefail
uri=${1:?usage: nbd_backup.sh URI SNAP BACKUP}
snap=${2:?usage: nbd_backup.sh URI SNAP BACKUP}
backup=${3:?usage: nbd_backup.sh URI SNAP BACKUP}
[ -f "$backup" ] || { echo "nbd_backup.sh: $backup is not a file (make the full copy first)" >&2; exit 1; }

# qemu reads a byte range of an export through its raw driver's offset/size options, which
# need the server spelled out: nbd+unix:///EXPORT?socket=PATH or nbd://HOST[:PORT]/EXPORT.
case $uri in
nbd+unix://*)
    export_name=${uri#nbd+unix:///}; export_name=${export_name%%\?*}
    sock=${uri#*socket=}; sock=${sock%%&*}
    server=$(jq -cn --arg p "$sock" '{type: "unix", path: $p}')
    ;;
nbd://*)
    rest=${uri#nbd://}; hostport=${rest%%/*}; export_name=${rest#*/}
    host=${hostport%:*}; port=10809
    [ "$host" != "$hostport" ] && port=${hostport##*:}
    server=$(jq -cn --arg h "$host" --arg p "$port" '{type: "inet", host: $h, port: $p}')
    ;;
*)
    echo "nbd_backup.sh: $uri: expected nbd+unix:///EXPORT?socket=PATH or nbd://HOST[:PORT]/EXPORT" >&2
    exit 1
    ;;
esac

size=$(nbdinfo --size "$uri")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# One JSON array of {offset, length, type} entries; bit 0 of type set: changed since SNAP.
nbdinfo --json --map="thinpool:changed:$snap" "$uri" > "$work/map.json"
# The volume may have grown since SNAP: the backup grows with it (never shrinks: a raw
# image of the old size stays a valid prefix).
if [ "$(stat -c %s "$backup")" -lt "$size" ]; then
    truncate -s "$size" "$backup"
fi
moved=0
while read -r off len; do
    rm -f "$work/chunk"
    src=$(jq -cn --argjson o "$off" --argjson l "$len" --arg e "$export_name" \
        --argjson s "$server" \
        '{driver: "raw", offset: $o, size: $l, file: {driver: "nbd", export: $e, server: $s}}')
    qemu-img convert -O raw "json:$src" "$work/chunk"
    [ "$(stat -c %s "$work/chunk")" -eq "$len" ] ||
        { echo "nbd_backup.sh: read $off+$len came back short" >&2; exit 1; }
    dd if="$work/chunk" of="$backup" bs=1M seek="$off" oflag=seek_bytes conv=notrunc \
        status=none
    moved=$((moved + len))
done < <(jq -r '.[] | select(.type % 2 == 1) | "\(.offset) \(.length)"' "$work/map.json")
sync "$backup"
echo "moved $moved of $size"
