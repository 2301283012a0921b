#!/usr/bin/env bash
# Builds the Consul agent (v1.14.11) that the integration tests run as
# `consul agent -dev` on loopback, and prints the binary's path on stdout.
#
# Consul is not packaged in Debian, so it is built from the Go module proxy
# through the tools module in tools/consul (its go.mod and go.sum pin every
# dependency; see the comment there). The binary goes into a cache directory
# that survives between runs:
#
#   ${NEONPROXY_CACHE:-$HOME/.cache/neonproxy}/consul-1.14.11/consul
#
# and the build is skipped when that binary is there and `consul version` says
# v1.14.11. A cold build (empty module and build caches) downloads about 210
# modules (~2.1 GB in the module cache, plus ~1.5 GB of build cache) and
# compiles for a few minutes; messages go to stderr, only the path to stdout.
set -euo pipefail

CONSUL_VERSION=1.14.11
XDSMATCHER=github.com/envoyproxy/go-control-plane/xdsmatcher

die() { echo "build-consul: $*" >&2; exit 1; }
log() { echo "build-consul: $*" >&2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
moddir=$root/tools/consul
[ -f "$moddir/go.mod" ] && [ -f "$moddir/go.sum" ] ||
  die "missing $moddir/go.mod or go.sum (the tools module that pins Consul's dependencies)"

if [ -n "${NEONPROXY_CACHE:-}" ]; then
  cache=$NEONPROXY_CACHE
elif [ -n "${HOME:-}" ]; then
  cache=$HOME/.cache/neonproxy
else
  die "neither NEONPROXY_CACHE nor HOME is set; cannot pick a cache directory"
fi
dir=$cache/consul-$CONSUL_VERSION
bin=$dir/consul

# is_wanted BINARY: true when BINARY runs and reports Consul v$CONSUL_VERSION.
is_wanted() {
  [ -x "$1" ] || return 1
  local out
  out=$("$1" version 2>/dev/null) || return 1
  [ "$(printf '%s\n' "$out" | head -n1)" = "Consul v$CONSUL_VERSION" ]
}

if is_wanted "$bin"; then
  echo "$bin"
  exit 0
fi

mkdir -p "$dir" || die "cannot create cache directory $dir"

# Two builds at once (parallel `make` runs) would both take minutes; let the
# second wait for the first and then reuse its binary.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$dir/.lock"
  flock 9
  if is_wanted "$bin"; then
    echo "$bin"
    exit 0
  fi
fi

GO=${GO:-go}
command -v "$GO" >/dev/null 2>&1 || die "Go toolchain '$GO' not found in PATH (set GO=/path/to/go)"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
# The xdsmatcher pseudo-version Consul needs is missing from sum.golang.org;
# go.sum carries its hashes (taken from Consul's own go.sum), so the build does
# not ask the checksum database. This only matters if go.sum is regenerated.
export GONOSUMDB=${GONOSUMDB:+$GONOSUMDB,}$XDSMATCHER
# A static binary, like HashiCorp's release builds; no C compiler needed.
export CGO_ENABLED=0

if [ -e "$bin" ]; then
  log "$bin is not Consul v$CONSUL_VERSION; rebuilding"
fi
log "building Consul v$CONSUL_VERSION into $bin (cold build takes several minutes)"

tmp=$(mktemp "$dir/consul.tmp.XXXXXX") || die "cannot create a temporary file in $dir"
trap 'rm -f "$tmp"' EXIT

start=$(date +%s)
# -mod=readonly: go.mod and go.sum are authoritative; fail rather than resolve
# anything anew.
if ! (cd "$moddir" && "$GO" build -mod=readonly -trimpath -ldflags='-s -w' \
  -o "$tmp" github.com/hashicorp/consul); then
  die "go build of github.com/hashicorp/consul@v$CONSUL_VERSION failed (module $moddir)"
fi
is_wanted "$tmp" ||
  die "built binary does not report Consul v$CONSUL_VERSION: $("$tmp" version 2>&1 | head -n1)"
mv -f "$tmp" "$bin"
trap - EXIT
log "built $bin in $(( $(date +%s) - start ))s"
echo "$bin"
