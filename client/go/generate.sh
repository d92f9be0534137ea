#!/usr/bin/env bash
# Builds this Go module offline from Debian 12 packages (scripts/install-deps.sh
# installs them):
#  1. fanv1/*.pb.go from proto/ with protoc, protoc-gen-go and protoc-gen-go-grpc;
#  2. vendor/ as links into /usr/share/gocode/src (Debian's Go sources) plus the
#     vendor/modules.txt that go.mod's requirements call for, so `go build`
#     runs in module mode with -mod=vendor and no module proxy;
#  3. fan/reasons_gen.go, a constant per fan.agent.v1.ErrorReason value.
# Nothing it makes is committed. Afterwards: GOFLAGS=-mod=vendor GOPROXY=off go build ./...
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
proto=${FAN_PROTO_DIR:-$here/../../proto}
gocode=${FAN_GOCODE:-/usr/share/gocode/src}
module=$(sed -n 's/^module //p' "$here/go.mod")

for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
    command -v "$tool" >/dev/null || { echo "generate.sh: $tool not found: run scripts/install-deps.sh" >&2; exit 1; }
done

# 1. The generated package, at the place its go_package names inside this module.
rm -f "$here"/fanv1/*.pb.go
protoc -I "$proto" -I /usr/include \
    --go_out="$here" --go_opt=module="$module" \
    --go-grpc_out="$here" --go-grpc_opt=module="$module" \
    fan/agent/v1/agent.proto
[ -f "$here/fanv1/agent.pb.go" ] || { echo "generate.sh: agent.proto's go_package is not $module/fanv1" >&2; exit 1; }

# 2. vendor/: every required module is a link to Debian's copy of it.
rm -rf "$here/vendor"
mkdir -p "$here/vendor"
: > "$here/vendor/modules.txt"
goversion=$(sed -n 's/^go //p' "$here/go.mod")
sed -n '/^require (/,/^)/p' "$here/go.mod" | grep -v '^require\|^)' | while read -r path version _; do
    [ -d "$gocode/$path" ] || { echo "generate.sh: $gocode/$path missing (Debian package not installed?)" >&2; exit 1; }
    mkdir -p "$(dirname "$here/vendor/$path")"
    ln -s "$gocode/$path" "$here/vendor/$path"
    printf '# %s %s\n## explicit\n' "$path" "$version" >> "$here/vendor/modules.txt"
done
[ -n "$goversion" ]

# 3. The reason constants, from the generated enum.
export GOFLAGS=-mod=vendor GOPROXY=off
(cd "$here" && go run ./internal/genreasons > fan/reasons_gen.go.tmp && mv fan/reasons_gen.go.tmp fan/reasons_gen.go)
(cd "$here" && go build ./... && go vet ./...)
