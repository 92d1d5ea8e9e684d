#!/usr/bin/env bash
# `npm start`: install, build and run Hindsight with embedded defaults (data in
# ./hindsight-data, NBD on 127.0.0.1:10809, API on 127.0.0.1:8640) and a first volume
# "disk0" of 20 GiB (sparse) ready to use. Extra arguments go to `hindsight serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh
hs_ensure_node_modules
hs_build
exec node bin/hindsight.js serve --create-volume disk0:20G "$@"
