#!/usr/bin/env bash
# Build thinpool's manual pages (roff, section 1) from its clap definitions:
#   tools/man.sh [DIR]     # default target/man; then: man -l target/man/thinpool-sync.1
# DIR is replaced when it holds only pages this script wrote before.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/man}
if [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
    if find "$dir" -mindepth 1 ! -name 'thinpool*.1' | grep -q .; then
        echo "man.sh: $dir holds other files; give a new or empty directory" >&2
        exit 1
    fi
    rm -f "$dir"/thinpool*.1
fi
cargo run --release --quiet -- manpages "$dir"
