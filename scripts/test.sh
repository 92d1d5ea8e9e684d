#!/usr/bin/env bash
# `npm test`: install what the tests need (npm packages; qemu-utils, nbdkit, libnbd tools,
# nbdfuse, fio, fuse3 via apt-get when root), build, then run every test with node:test.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh
hs_ensure_debs qemu-utils nbdkit libnbd-bin python3-libnbd nbdfuse fuse3 e2fsprogs util-linux fio
hs_ensure_node_modules
hs_build
mapfile -t files < <(find test -name '*.test.ts' | sort)
exec node --import tsx --test --test-reporter=spec "${files[@]}"
