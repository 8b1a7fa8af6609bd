#!/usr/bin/env bash
# The whole test suite: installs the system tools the end-to-end tests use (when missing),
# then runs formatting, lint and every test. Usage: tools/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
want() {
  command -v "$1" >/dev/null 2>&1 && return
  [[ " ${need_pkgs[*]} " == *" $2 "* ]] || need_pkgs+=("$2")
}
want qemu-img qemu-utils
want qemu-io qemu-utils
want nbdinfo libnbd-bin
want nbdcopy libnbd-bin
want nbdfuse nbdfuse
want fio fio
want thin_check thin-provisioning-tools
want jq jq
want mkfs.ext4 e2fsprogs
want rbd ceph-common   # rbd merge-diff reads our export-diff streams (Ceph's own parser)
want openssl openssl   # certificates for the NBD TLS tests
want unshare util-linux   # fio over TLS as a non-root uid (libnbd reads /etc/pki as root)
# A single-node Ceph cluster for `thinpool sync` (tests/ceph_sync.rs, tools/ceph_single.sh),
# installed without the recommended extras (ceph-mgr, ...), which it does not need.
need_ceph=()
for t in ceph-mon ceph-osd; do command -v $t >/dev/null 2>&1 || need_ceph+=("$t"); done
if [ $((${#need_pkgs[@]} + ${#need_ceph[@]})) -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${need_pkgs[*]} ${need_ceph[*]}"
    apt-get update -qq
    if [ ${#need_pkgs[@]} -gt 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
    fi
    if [ ${#need_ceph[@]} -gt 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need_ceph[@]}" ceph-common >/dev/null
    fi
  else
    echo "missing tools (${need_pkgs[*]} ${need_ceph[*]}) and cannot apt-get install them" >&2
    [ -n "${CI:-}" ] && exit 1
  fi
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo build --release
# The whole suite on each data-file engine: the default (auto: io_uring where this process may
# use it) and the pread/pwrite fallback that containers without io_uring get (issue 9).
echo "== cargo test, io engine: auto ($(./target/release/thinpool --version))"
cargo test --release 2>&1 | tee /tmp/thinpool-test.log
# The second pass also turns arithmetic overflow checks on (a release build wraps silently;
# a read at an offset near 2^64 once overflowed where only a debug build noticed).
echo "== cargo test, io engine: sync (THINPOOL_IO_ENGINE=sync), overflow checks on"
THINPOOL_IO_ENGINE=sync CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true cargo test --release 2>&1 |
  tee /tmp/thinpool-test-sync.log

# The concurrency model (issue 10): the real SharedPool under shuttle's schedulers, a few
# thousand schedules per scenario, and each seeded bug must be found. Prints its counts.
cargo clippy --all-targets --features shuttle -- -D warnings
echo "== concurrency model (shuttle)"
cargo test --release --features shuttle --test shuttle_model -- --nocapture 2>&1 |
  grep -v '^pass that string\|^failing schedule\|^"$\|^[0-9a-f]*$' | tee /tmp/thinpool-shuttle.log
grep -q '^test result: ok' /tmp/thinpool-shuttle.log

# Fuzzing in every CI run (issue 10): tests/fuzz.rs ran above; each target printed its count
# and time. Sum them, and fail when they fell below the 100,000 inputs a run must try.
grep '^fuzz: .* cases in' /tmp/thinpool-test.log |
  awk '{ n += $3; t += $6; print } END {
    printf "fuzz: total %d cases in %.1f s of test time\n", n, t
    if (n < 100000) { print "fuzz: fewer than 100000 cases" > "/dev/stderr"; exit 1 } }'

# Crash injection on every change (issue 3): >= 20,000 simulated crash states over 4 seeds,
# then 30 rounds of SIGKILL against the real binary on real files.
./target/release/thinpool crashtest --seed 1 --seeds 4 --ops 1000
kdir=$(mktemp -d)
./target/release/thinpool crashtest --kill "$kdir/pool" --rounds 30 --seed 1
rm -rf "$kdir"
