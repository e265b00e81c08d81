#!/usr/bin/env bash
# Builds the local Kubernetes control plane that Ordo's end-to-end tests run on:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and kubectl,
# from the modules pinned in tests/cluster/go.mod, with the machine's Go toolchain.
#
# Output: ${ORDO_CACHE:-$HOME/.cache/ordo}/k8s-<version>/bin/ (outside the repository).
# A stamp file written last records the go.sum the binaries were built from; when it
# matches and every binary is present the script does nothing. When the stamp is
# missing only the missing binaries are built; when go.sum changed, all are rebuilt.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

fail() {
    echo "build.sh: error: $*" >&2
    exit 1
}
log() {
    echo "[cluster-build $(date -u +%H:%M:%S)] $*"
}

command -v go >/dev/null 2>&1 || fail "go is not installed; install Go >= 1.26 (see go.mod's go line)"

# The pinned release, read from go.mod so that there is one place to change it.
# Matches both `require mod vX` and a line inside a `require ( ... )` block; skips replaces.
required_version() {
    awk -v m="$1" '$0 !~ /=>/ { for (i = 1; i < NF; i++) if ($i == m && $(i + 1) ~ /^v[0-9]/) { print $(i + 1); exit } }' go.mod
}
k8s_version="$(required_version k8s.io/kubernetes)"
etcd_version="$(required_version go.etcd.io/etcd/server/v3)"
kwok_version="$(required_version sigs.k8s.io/kwok)"
[[ -n "$k8s_version" && -n "$etcd_version" && -n "$kwok_version" ]] ||
    fail "could not read the k8s.io/kubernetes, etcd and kwok versions from $here/go.mod"

cache_root="${ORDO_CACHE:-$HOME/.cache/ordo}"
bin_dir="$cache_root/k8s-$k8s_version/bin"
stamp="$bin_dir/.built"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubectl)

sum_hash="$(cat go.mod go.sum | sha256sum | cut -d' ' -f1)"
expected_stamp="k8s=$k8s_version etcd=$etcd_version kwok=$kwok_version modules=$sum_hash"

# kwok has no built-in behaviour: its stages (node initialise + lease heartbeat, pod
# ready/complete/delete) are copied from the pinned kwok module, next to the binaries.
kwok_stages="$bin_dir/kwok-stages.yaml"

all_present() {
    local b
    for b in "${binaries[@]}"; do
        [[ -x "$bin_dir/$b" ]] || return 1
    done
    [[ -s "$kwok_stages" ]]
}

if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$expected_stamp" ]] && all_present; then
    log "control plane $k8s_version is up to date in $bin_dir"
    exit 0
fi

mkdir -p "$bin_dir"
if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" != "$expected_stamp" ]]; then
    log "go.mod/go.sum changed since the last build: rebuilding every binary"
    rm -f "$stamp"
    for b in "${binaries[@]}"; do rm -f "$bin_dir/$b"; done
fi

go_version="$(go env GOVERSION)"
log "Go $go_version; building Kubernetes $k8s_version, etcd $etcd_version, kwok $kwok_version into $bin_dir"

export GOTOOLCHAIN=local
# go.sum is committed: refuse to silently change the module graph.
export GOFLAGS="-mod=readonly -buildvcs=false"
# Static binaries, as the Kubernetes release builds them; no C toolchain needed.
export CGO_ENABLED=0

major="${k8s_version#v}"
major="${major%%.*}"
minor="${k8s_version#v*.}"
minor="${minor%%.*}"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
cb=k8s.io/component-base/version
# The published module source of the tag is the release tree, hence "clean"; the module
# proxy does not carry the commit id, so gitCommit stays empty rather than made up.
k8s_ldflags="-s -w -X $cb.gitVersion=$k8s_version -X $cb.gitMajor=$major -X $cb.gitMinor=$minor"
k8s_ldflags+=" -X $cb.gitTreeState=clean -X $cb.gitCommit= -X $cb.buildDate=$build_date"

log "downloading modules (go mod download)"
go mod download || fail "go mod download failed (module proxy: $(go env GOPROXY))"

# name -> package, and the extra -X flags that stamp the component's own version.
package_of() {
    case "$1" in
        etcd) echo "./cmd/etcd" ;;
        kwok) echo "sigs.k8s.io/kwok/cmd/kwok" ;;
        *) echo "k8s.io/kubernetes/cmd/$1" ;;
    esac
}
ldflags_of() {
    case "$1" in
        etcd) echo "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=release-$etcd_version" ;;
        kwok) echo "$k8s_ldflags -X sigs.k8s.io/kwok/pkg/consts.Version=${kwok_version#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${k8s_version#v}" ;;
        *) echo "$k8s_ldflags" ;;
    esac
}

# Smallest first: later builds reuse the shared packages from the Go build cache.
order=(etcd kwok kube-scheduler kubectl kube-controller-manager kube-apiserver)
start_all=$SECONDS
for b in "${order[@]}"; do
    if [[ -x "$bin_dir/$b" ]]; then
        log "$b: present, skipped"
        continue
    fi
    pkg="$(package_of "$b")"
    log "$b: building $pkg (go build -p 2; the first cold build takes a while)"
    start=$SECONDS
    tmp="$bin_dir/.$b.tmp.$$"
    if ! go build -p 2 -trimpath -ldflags "$(ldflags_of "$b")" -o "$tmp" "$pkg"; then
        rm -f "$tmp"
        fail "building $b ($pkg) failed; see the compiler output above"
    fi
    mv -f "$tmp" "$bin_dir/$b"
    log "$b: built in $((SECONDS - start))s"
done

if [[ ! -s "$kwok_stages" ]]; then
    kwok_dir="$(go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)" || fail "cannot locate the kwok module source"
    {
        echo "# kwok $kwok_version stages, copied by tests/cluster/build.sh from $kwok_dir/kustomize/stage"
        first=1
        for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
            pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
            [[ -f "$kwok_dir/kustomize/stage/$f" ]] || fail "kwok stage $f is missing from $kwok_dir"
            [[ $first == 1 ]] || echo "---"
            first=0
            cat "$kwok_dir/kustomize/stage/$f"
        done
    } >"$kwok_stages.tmp"
    mv -f "$kwok_stages.tmp" "$kwok_stages"
    log "kwok stages written to $kwok_stages"
fi

"$bin_dir/kube-apiserver" --version | grep -qx "Kubernetes $k8s_version" ||
    fail "kube-apiserver reports '$("$bin_dir/kube-apiserver" --version)', expected 'Kubernetes $k8s_version'"

echo "$expected_stamp" >"$stamp.tmp"
mv -f "$stamp.tmp" "$stamp"
log "done in $((SECONDS - start_all))s: $bin_dir"
