# Shared set-up for scripts/start.sh and scripts/test.sh: installs what Hindsight needs on a
# fresh machine (npm packages; Debian packages via apt-get when root and missing) and builds.

hs_have_deb() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# hs_ensure_debs PKG...: installs the missing ones when root, otherwise says what to install.
hs_ensure_debs() {
  local missing=()
  for pkg in "$@"; do hs_have_deb "$pkg" || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "hindsight: missing Debian packages: ${missing[*]} (run as root or: sudo apt-get install ${missing[*]})" >&2
    return 1
  fi
  echo "hindsight: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# hs_ensure_node_modules: npm ci when node_modules is missing or older than the lock file.
hs_ensure_node_modules() {
  if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "hindsight: installing npm packages" >&2
    npm ci --no-audit --no-fund --loglevel=error >&2
  fi
}

hs_build() {
  npx tsc -p tsconfig.json
}
