#!/usr/bin/env bash
# Builds what a real node of the local cluster runs besides the control plane: kubelet and
# kube-proxy from the k8s.io/kubernetes release pinned in tests/cluster/go.mod (built in the
# module tests/cluster/node, which pins the same release: the control plane's module graph
# lacks a few of their dependencies), and containerd, its runc shim and ctr from the module
# pinned in tests/cluster/containerd/go.mod. runc, the CNI plugins and iptables come from
# Debian packages, installed when missing.
#
# The Pods' sandbox image is built too, from tests/cluster/node/pause, into an OCI archive
# (scripts/images assemble), because the local cluster never pulls from a registry.
#
# Output: ${ORDO_CACHE:-$HOME/.cache/ordo}/k8s-<version>/node/bin/ (outside the repository).
# A stamp file written last records both module graphs; when it matches and every binary is
# present the script does nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

fail() {
    echo "build-node.sh: error: $*" >&2
    exit 1
}
log() {
    echo "[node-build $(date -u +%H:%M:%S)] $*"
}

command -v go >/dev/null 2>&1 || fail "go is not installed; install Go >= 1.26 (see go.mod's go line)"

required_version() {
    awk -v m="$2" '$0 !~ /=>/ { for (i = 1; i < NF; i++) if ($i == m && $(i + 1) ~ /^v[0-9]/) { print $(i + 1); exit } }' "$1"
}
k8s_version="$(required_version go.mod k8s.io/kubernetes)"
node_k8s_version="$(required_version node/go.mod k8s.io/kubernetes)"
containerd_version="$(required_version containerd/go.mod github.com/containerd/containerd/v2)"
[[ -n "$k8s_version" && -n "$containerd_version" ]] ||
    fail "could not read the k8s.io/kubernetes and containerd versions from go.mod and containerd/go.mod"
[[ "$node_k8s_version" == "$k8s_version" ]] ||
    fail "node/go.mod pins k8s.io/kubernetes $node_k8s_version, go.mod (the control plane) $k8s_version"

cache_root="${ORDO_CACHE:-$HOME/.cache/ordo}"
bin_dir="$cache_root/k8s-$k8s_version/node/bin"
stamp="$bin_dir/.built"
kubernetes_binaries=(kubelet kube-proxy)
containerd_binaries=(containerd containerd-shim-runc-v2 ctr)
# The sandbox image, named localhost/ordo-node/pause:<k8s version> (the harness configures
# containerd with that name).
pause_archive=pause.oci.tar
# runc runs the containers; the CNI plugins wire their network; iptables for the bridge and
# kube-proxy; conntrack for kube-proxy's cleanup of stale UDP flows.
debian_packages=(runc containernetworking-plugins iptables conntrack)

sum_hash="$(cat node/go.mod node/go.sum containerd/go.mod containerd/go.sum | sha256sum | cut -d' ' -f1)"
expected_stamp="k8s=$k8s_version containerd=$containerd_version modules=$sum_hash"

install_debian_packages() {
    local missing=() package
    for package in "${debian_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$package")
    done
    ((${#missing[@]})) || return 0
    log "installing Debian packages: ${missing[*]}"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo -n)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

all_present() {
    local b
    for b in "${kubernetes_binaries[@]}" "${containerd_binaries[@]}" pause; do
        [[ -x "$bin_dir/$b" ]] || return 1
    done
    [[ -s "$bin_dir/$pause_archive" ]]
}

if command -v dpkg-query >/dev/null 2>&1; then
    install_debian_packages
fi
if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$expected_stamp" ]] && all_present; then
    log "node binaries ($k8s_version, containerd $containerd_version) are up to date in $bin_dir"
    exit 0
fi

mkdir -p "$bin_dir"
if [[ -f "$stamp" ]]; then
    log "go.mod/go.sum changed since the last build: rebuilding every binary"
    rm -f "$stamp"
    for b in "${kubernetes_binaries[@]}" "${containerd_binaries[@]}" pause "$pause_archive"; do
        rm -f "${bin_dir:?}/$b"
    done
fi

export GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -buildvcs=false"
# Static binaries, as the Kubernetes release builds them; containerd's only cgo part (the
# btrfs snapshotter) is left out by its build constraints.
export CGO_ENABLED=0

major="${k8s_version#v}"
major="${major%%.*}"
minor="${k8s_version#v*.}"
minor="${minor%%.*}"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
cb=k8s.io/component-base/version
k8s_ldflags="-s -w -X $cb.gitVersion=$k8s_version -X $cb.gitMajor=$major -X $cb.gitMinor=$minor"
k8s_ldflags+=" -X $cb.gitTreeState=clean -X $cb.gitCommit= -X $cb.buildDate=$build_date"
containerd_ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd_version"
containerd_ldflags+=" -X github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd/v2"

# build DIR NAME PACKAGE LDFLAGS: one binary, built in the module at DIR.
build() {
    local dir="$1" name="$2" package="$3" ldflags="$4" start=$SECONDS tmp
    if [[ -x "$bin_dir/$name" ]]; then
        log "$name: present, skipped"
        return 0
    fi
    log "$name: building $package (go build -p 2; the first cold build takes a while)"
    tmp="$bin_dir/.$name.tmp.$$"
    if ! (cd "$dir" && go build -p 2 -trimpath -ldflags "$ldflags" -o "$tmp" "$package"); then
        rm -f "$tmp"
        fail "building $name ($package) failed; see the compiler output above"
    fi
    mv -f "$tmp" "$bin_dir/$name"
    log "$name: built in $((SECONDS - start))s"
}

# kubelet and kube-proxy share most of their packages with the control plane (client-go,
# apiserver, grpc, otel, golang.org/x/*). Go reuses a compiled package from the build cache
# only when the package and everything below it are the same versions: one differing
# golang.org/x/sys rebuilds nearly all of Kubernetes (a cold kube-proxy took 17 min that way).
# So every module the node binaries compile must be at the control plane's version.
shared_versions_check() {
    local format='{{.Path}} {{if .Replace}}{{.Replace.Version}}{{else}}{{.Version}}{{end}}' mismatched
    mismatched="$(join <(go list -m -f "$format" all | sort -u) \
        <(cd node && go list -deps -f "{{with .Module}}$format{{end}}" \
            k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy | sort -u) |
        awk '$2 != $3 { print "  " $1 ": control plane " $2 ", node " $3 }')"
    [[ -z "$mismatched" ]] ||
        fail "node/go.mod resolves modules to other versions than go.mod, so the node build could not reuse the control plane's compiled packages; raise them in node/go.mod (go get MODULE@VERSION) to match:"$'\n'"$mismatched"
}

start_all=$SECONDS
log "Go $(go env GOVERSION); building kubelet and kube-proxy $k8s_version, containerd $containerd_version into $bin_dir"
for module in node containerd; do
    (cd "$module" && go mod download) || fail "go mod download failed in $module (module proxy: $(go env GOPROXY))"
done
shared_versions_check
# The control plane's packages are in the Go build cache already: the Kubernetes ones first.
build node kube-proxy k8s.io/kubernetes/cmd/kube-proxy "$k8s_ldflags"
build node kubelet k8s.io/kubernetes/cmd/kubelet "$k8s_ldflags"
build containerd ctr github.com/containerd/containerd/v2/cmd/ctr "$containerd_ldflags"
build containerd containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 "$containerd_ldflags"
build containerd containerd github.com/containerd/containerd/v2/cmd/containerd "$containerd_ldflags"
build node pause ./pause "-s -w"
if [[ ! -s "$bin_dir/$pause_archive" ]]; then
    log "pause: assembling the sandbox image (scripts/images assemble)"
    ORDO_IMAGE_REGISTRY=localhost/ordo-node ORDO_IMAGE_TAG="$k8s_version" ORDO_IMAGE_WORK="$bin_dir/.image-work" \
        ../../scripts/images assemble pause "$bin_dir/pause" "$bin_dir/$pause_archive.tmp" >/dev/null
    rm -rf "$bin_dir/.image-work"
    mv -f "$bin_dir/$pause_archive.tmp" "$bin_dir/$pause_archive"
fi

"$bin_dir/kubelet" --version | grep -qx "Kubernetes $k8s_version" ||
    fail "kubelet reports '$("$bin_dir/kubelet" --version)', expected 'Kubernetes $k8s_version'"
"$bin_dir/containerd" --version | grep -q " $containerd_version " ||
    fail "containerd reports '$("$bin_dir/containerd" --version)', expected $containerd_version"

echo "$expected_stamp" >"$stamp.tmp"
mv -f "$stamp.tmp" "$stamp"
log "done in $((SECONDS - start_all))s: $bin_dir"
