#!/usr/bin/env bash
# Builds helm, the Helm 3 CLI that Ordo's chart tests (tests/tests/e2e_helm.rs) and users
# of charts/ordo run, from the module pinned in tests/cluster/helm/go.mod, with the
# machine's Go toolchain (no binary is downloaded; only Go modules from the module proxy).
#
# Output: ${ORDO_CACHE:-$HOME/.cache/ordo}/helm-<version>/bin/helm (outside the repository).
# A stamp file written last records the go.mod/go.sum the binary was built from; when it
# matches and the binary is present the script does nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module_dir="$here/helm"
cd "$module_dir"

fail() {
    echo "build-helm.sh: error: $*" >&2
    exit 1
}
log() {
    echo "[helm-build $(date -u +%H:%M:%S)] $*"
}

command -v go >/dev/null 2>&1 || fail "go is not installed; install Go >= 1.26 (see tests/cluster/helm/go.mod's go line)"

# The pinned release, read from go.mod so that there is one place to change it.
helm_version="$(awk '$1 == "helm.sh/helm/v3" && $2 ~ /^v[0-9]/ { print $2; exit }' go.mod)"
client_go_version="$(awk '$1 == "k8s.io/client-go" && $2 ~ /^v[0-9]/ { print $2; exit }' go.mod)"
[[ -n "$helm_version" && -n "$client_go_version" ]] ||
    fail "could not read the helm.sh/helm/v3 and k8s.io/client-go versions from $module_dir/go.mod"

cache_root="${ORDO_CACHE:-$HOME/.cache/ordo}"
bin_dir="$cache_root/helm-$helm_version/bin"
helm="$bin_dir/helm"
stamp="$bin_dir/.built"
sum_hash="$(cat go.mod go.sum | sha256sum | cut -d' ' -f1)"
expected_stamp="helm=$helm_version modules=$sum_hash"

if [[ -x "$helm" && -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$expected_stamp" ]]; then
    log "helm $helm_version is up to date in $bin_dir"
    exit 0
fi

mkdir -p "$bin_dir"
rm -f "$stamp"
log "Go $(go env GOVERSION); building helm $helm_version into $bin_dir"

export GOTOOLCHAIN=local
# go.sum is committed: refuse to silently change the module graph.
export GOFLAGS="-mod=readonly -buildvcs=false"
# A static binary, as Helm's release build makes it; no C toolchain needed.
export CGO_ENABLED=0

# The same -X flags as Helm's Makefile for a tagged release: `helm version` reports the
# pinned tag, and the Kubernetes version Helm assumes offline (`helm template`, `helm lint`)
# is derived from the client-go it is built with (v0.X.Y -> 1.X), as upstream does. The
# module proxy does not carry the commit id, so gitCommit stays empty rather than made up.
client_go="${client_go_version#v}"
k8s_major="$((${client_go%%.*} + 1))"
k8s_minor="${client_go#*.}"
k8s_minor="${k8s_minor%%.*}"
ldflags="-s -w"
ldflags+=" -X helm.sh/helm/v3/internal/version.version=$helm_version"
ldflags+=" -X helm.sh/helm/v3/internal/version.metadata="
ldflags+=" -X helm.sh/helm/v3/internal/version.gitCommit="
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=$k8s_major -X $pkg.k8sVersionMinor=$k8s_minor"
done

log "downloading modules (go mod download)"
go mod download || fail "go mod download failed (module proxy: $(go env GOPROXY))"

log "building helm.sh/helm/v3/cmd/helm (go build -p 2)"
start=$SECONDS
tmp="$bin_dir/.helm.tmp.$$"
if ! go build -p 2 -trimpath -ldflags "$ldflags" -o "$tmp" helm.sh/helm/v3/cmd/helm; then
    rm -f "$tmp"
    fail "building helm failed; see the compiler output above"
fi
mv -f "$tmp" "$helm"

reported="$("$helm" version --template '{{ .Version }}')"
[[ "$reported" == "$helm_version" ]] || fail "helm reports version '$reported', expected '$helm_version'"

echo "$expected_stamp" >"$stamp.tmp"
mv -f "$stamp.tmp" "$stamp"
log "helm $helm_version built in $((SECONDS - start))s: $helm"
