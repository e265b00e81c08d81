#!/usr/bin/env bash
# Builds promtool, Prometheus's rule checker, from the module pinned in
# tests/cluster/promtool/go.mod with the machine's Go toolchain (no binary is downloaded; only
# Go modules from the module proxy). tests/tests/monitoring.rs runs `promtool check rules` and
# `promtool test rules` on the chart's PrometheusRule with it.
#
# Output: ${ORDO_CACHE:-$HOME/.cache/ordo}/promtool-<version>/bin/promtool (outside the
# repository). A stamp file written last records the go.mod/go.sum the binary was built from;
# when it matches and the binary is present the script does nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module_dir="$here/promtool"
cd "$module_dir"

fail() {
    echo "build-promtool.sh: error: $*" >&2
    exit 1
}
log() {
    echo "[promtool-build $(date -u +%H:%M:%S)] $*"
}

command -v go >/dev/null 2>&1 || fail "go is not installed; install Go >= 1.26 (see tests/cluster/promtool/go.mod's go line)"

# Prometheus 3.x publishes its Go module as v0.3MM.P for release 3.MM.P.
module_version="$(awk '$1 == "github.com/prometheus/prometheus" && $2 ~ /^v[0-9]/ { print $2; exit }' go.mod)"
[[ -n "$module_version" ]] || fail "could not read the github.com/prometheus/prometheus version from $module_dir/go.mod"
minor_patch="${module_version#v0.3}"
release="3.$((10#${minor_patch%%.*})).${minor_patch#*.}"

cache_root="${ORDO_CACHE:-$HOME/.cache/ordo}"
bin_dir="$cache_root/promtool-$module_version/bin"
promtool="$bin_dir/promtool"
stamp="$bin_dir/.built"
sum_hash="$(cat go.mod go.sum | sha256sum | cut -d' ' -f1)"
expected_stamp="promtool=$module_version modules=$sum_hash"

if [[ -x "$promtool" && -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$expected_stamp" ]]; then
    log "promtool $release is up to date in $bin_dir"
    exit 0
fi

mkdir -p "$bin_dir"
rm -f "$stamp"
log "Go $(go env GOVERSION); building promtool $release ($module_version) into $bin_dir"

export GOTOOLCHAIN=local
# go.sum is committed: refuse to silently change the module graph.
export GOFLAGS="-mod=readonly -buildvcs=false"
export CGO_ENABLED=0

# The version Prometheus's own release build stamps, so `promtool --version` tells the truth.
ldflags="-s -w -X github.com/prometheus/common/version.Version=$release"

log "downloading modules (go mod download)"
go mod download || fail "go mod download failed (module proxy: $(go env GOPROXY))"

log "building github.com/prometheus/prometheus/cmd/promtool (go build -p 2)"
start=$SECONDS
tmp="$bin_dir/.promtool.tmp.$$"
if ! go build -p 2 -trimpath -ldflags "$ldflags" -o "$tmp" github.com/prometheus/prometheus/cmd/promtool; then
    rm -f "$tmp"
    fail "building promtool failed; see the compiler output above"
fi
mv -f "$tmp" "$promtool"

"$promtool" --version >/dev/null || fail "the built promtool does not run"

echo "$expected_stamp" >"$stamp.tmp"
mv -f "$stamp.tmp" "$stamp"
log "promtool $release built in $((SECONDS - start))s: $promtool"
