#!/usr/bin/env bash
# Prepare everything tests/vm/fan-vm needs to boot Debian's stock kernel under qemu (TCG).
#
# Idempotent: installs missing host packages with apt-get, downloads the kernel package
# (apt-get download, never installed into the host's /boot or /lib/modules), extracts it into
# the cache, extracts an uncompressed vmlinux (booted directly via PVH) and builds the
# busybox initramfs.  A second run with everything in place does nothing (and needs no network).
#
# Environment:
#   FAN_VM_CACHE    cache directory (default /var/cache/fan-vm)
#   FAN_VM_KERNEL   concrete kernel package to use, e.g. linux-image-6.1.0-56-amd64
#                   (default: whatever linux-image-amd64 depends on; resolved only when the
#                   cache has no kernel yet)
#   FAN_VM_REFRESH  1 = re-resolve linux-image-amd64 even if a kernel is cached
#   FAN_VM_APT_SUITE  take the kernel from this Debian suite instead of the host's sources, e.g.
#                   bookworm-backports (Debian's 6.12, with netkit); apt reads it through lists
#                   kept under the cache (signatures checked as usual), the host's apt
#                   configuration and lists are not touched. Give each suite its own cache.
#   FAN_VM_QUIET    1 = print nothing when already set up
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${FAN_VM_CACHE:-/var/cache/fan-vm}"

log() { printf 'fan-vm setup: %s\n' "$*" >&2; }
die() { printf 'fan-vm setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, and qemu later reads the whole host root)"

# --- host packages --------------------------------------------------------------------------
# command -> package.  busybox-static is checked by file: a dynamic busybox is useless in the
# initramfs.  kmod gives the host (and so the VM, which runs on the host's root) modprobe and
# depmod; iproute2 and iputils-ping are what the smoke test and the kernel tests use inside.
need_pkgs=()
have_cmd() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
have_cmd qemu-system-x86_64 || need_pkgs+=(qemu-system-x86)
[ -x /bin/busybox ] && file_is_static=$( { LC_ALL=C ldd /bin/busybox 2>&1 || true; } | grep -c 'not a dynamic' || true) || file_is_static=0
[ "${file_is_static:-0}" -ge 1 ] || need_pkgs+=(busybox-static)
have_cmd cpio || need_pkgs+=(cpio)
have_cmd modprobe && have_cmd depmod || need_pkgs+=(kmod)
have_cmd xz || need_pkgs+=(xz-utils)
have_cmd ip || need_pkgs+=(iproute2)
have_cmd ping || need_pkgs+=(iputils-ping)
have_cmd dpkg-deb || die "dpkg-deb missing: this needs a Debian host"
# qemu's PVH option ROM and SeaBIOS come with qemu-system-x86 (Depends), but check anyway.
[ -e /usr/share/qemu/pvh.bin ] || [ -e /usr/share/seabios/bios-256k.bin ] || need_pkgs+=(qemu-system-x86 seabios)

apt_updated=0
apt_update() {
    [ "$apt_updated" = 1 ] && return 0
    log "apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed"
    apt_updated=1
}
apt_install() { apt-get install -y -qq --no-install-recommends "$@" >&2; }
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Trap: this machine kind ships qemu-utils (qemu-img) 10.x from bookworm-backports, which
    # Breaks Debian 12's qemu-system-x86 7.2; a plain install silently REMOVES qemu-utils.
    # Ask for the matching qemu-utils (a downgrade) so qemu-img stays available.
    extra=()
    if [[ " ${need_pkgs[*]} " == *" qemu-system-x86 "* ]] && dpkg -s qemu-utils >/dev/null 2>&1; then
        cand="$(apt-cache policy qemu-system-x86 2>/dev/null | awk '/Candidate:/ {print $2}')"
        inst="$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null)"
        if [ -n "$cand" ] && [ "$cand" != "(none)" ] && [ "$inst" != "$cand" ]; then
            extra=("qemu-utils=$cand" --allow-downgrades)
        fi
    fi
    log "installing: ${need_pkgs[*]} ${extra[*]}"
    if ! apt_install "${need_pkgs[@]}" "${extra[@]}"; then
        apt_update
        apt_install "${need_pkgs[@]}" "${extra[@]}" || apt_install "${need_pkgs[@]}" \
            || die "apt-get install ${need_pkgs[*]} failed"
    fi
fi

mkdir -p "$cache"
# Serialise concurrent setups (e.g. two cargo invocations racing on a fresh machine).
exec 9>"$cache/.setup.lock"
flock 9

# --- kernel package ---------------------------------------------------------------------------
# apt options for the kernel: none (the host's sources), or a private view of one suite.
kapt=()
kapt_update() { apt_update; }
if [ -n "${FAN_VM_APT_SUITE:-}" ]; then
    adir="$cache/apt"
    mkdir -p "$adir/lists/partial" "$adir/sources.list.d"
    chown -R _apt "$adir/lists" 2>/dev/null || true
    : >"$adir/sources.list"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$FAN_VM_APT_SUITE" >"$adir/sources.list.d/fan-vm.sources"
    kapt=(-o "Dir::Etc::SourceList=$adir/sources.list" -o "Dir::Etc::SourceParts=$adir/sources.list.d"
        -o "Dir::State::Lists=$adir/lists" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")
    kapt_update() {
        log "apt-get update ($FAN_VM_APT_SUITE, lists in $adir)"
        apt-get "${kapt[@]}" update -qq >&2 || die "apt-get update of $FAN_VM_APT_SUITE failed"
    }
fi

resolve_kernel_pkg() {
    if [ -n "${FAN_VM_KERNEL:-}" ]; then echo "$FAN_VM_KERNEL"; return; fi
    local dep
    dep=$(apt-cache "${kapt[@]}" depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    if [ -z "$dep" ]; then
        kapt_update
        dep=$(apt-cache "${kapt[@]}" depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    fi
    [ -n "$dep" ] || die "cannot resolve the package behind linux-image-amd64 (apt-cache depends)"
    echo "$dep"
}

kdir=""
if [ -z "${FAN_VM_KERNEL:-}" ] && [ "${FAN_VM_REFRESH:-0}" != 1 ] && [ -f "$cache/current/kver" ] \
    && [ -f "$cache/current/.extracted" ]; then
    kdir="$(cd "$cache/current" && pwd -P)"
else
    pkg="$(resolve_kernel_pkg)"
    kver="${pkg#linux-image-}"
    kdir="$cache/$kver"
fi

if [ ! -f "$kdir/.extracted" ]; then
    pkg="linux-image-$(basename "$kdir")"
    kver="$(basename "$kdir")"
    log "downloading $pkg (apt-get download; not installed on the host)"
    rm -rf "$kdir"
    mkdir -p "$kdir/dl"
    # apt drops privileges to _apt for downloads; let it write the directory.
    chown _apt "$kdir/dl" 2>/dev/null || true
    if ! (cd "$kdir/dl" && apt-get "${kapt[@]}" download -qq "$pkg" >&2); then
        kapt_update
        (cd "$kdir/dl" && apt-get "${kapt[@]}" download -qq "$pkg" >&2) || die "apt-get download $pkg failed"
    fi
    deb="$(ls "$kdir"/dl/*.deb | head -n1)"
    log "extracting $(basename "$deb")"
    dpkg-deb -x "$deb" "$kdir/root"
    [ -d "$kdir/root/lib/modules/$kver" ] || die "no lib/modules/$kver in $deb"
    # The package's postinst would run depmod; do it on the extracted tree.
    depmod -b "$kdir/root" "$kver"
    echo "$kver" >"$kdir/kver"
    dpkg-deb -f "$deb" Version >"$kdir/pkgversion"
    rm -rf "$kdir/dl"
    touch "$kdir/.extracted"
fi
kver="$(cat "$kdir/kver")"
mroot="$kdir/root/lib/modules/$kver"

# --- uncompressed vmlinux (PVH entry point; qemu boots the ELF directly) ----------------------
if [ ! -s "$kdir/vmlinux" ]; then
    vmlinuz="$kdir/root/boot/vmlinuz-$kver"
    [ -f "$vmlinuz" ] || die "missing $vmlinuz"
    log "extracting vmlinux from $(basename "$vmlinuz")"
    tmp="$kdir/vmlinux.tmp"
    ok=0
    # Same idea as the kernel's scripts/extract-vmlinux: find the compressed payload by its
    # magic and decompress it; try every candidate offset until one yields an ELF.
    for spec in 'xz:\xfd7zXZ\x00' 'zstd:\x28\xb5\x2f\xfd' 'gzip:\x1f\x8b\x08'; do
        tool="${spec%%:*}"
        magic="${spec#*:}"
        command -v "$tool" >/dev/null || continue
        for off in $(LC_ALL=C grep -obUaP "$magic" "$vmlinuz" | cut -d: -f1); do
            tail -c "+$((off + 1))" "$vmlinuz" | "$tool" -dc >"$tmp" 2>/dev/null || true
            if [ "$(head -c 4 "$tmp" | od -An -c | tr -d ' ')" = '177ELF' ]; then ok=1; break 2; fi
        done
    done
    [ "$ok" = 1 ] || die "could not extract an ELF vmlinux from $vmlinuz"
    mv "$tmp" "$kdir/vmlinux"
fi

# --- initramfs ---------------------------------------------------------------------------------
# Modules the initramfs must load itself (everything else autoloads from the host-root view
# after switch_root): PCI virtio transport, virtio-serial (result ports), virtio-rng (so
# getrandom() never waits for entropy), 9p over virtio, overlayfs.
initmods=(virtio_pci virtio_console virtio_rng 9pnet_virtio 9p overlay)
stamp_input() {
    sha256sum "$here/init" "${BASH_SOURCE[0]}" | awk '{print $1}'
    echo "$kver ${initmods[*]}"
    readlink -f /bin/busybox
}
want_stamp="$(stamp_input | sha256sum | awk '{print $1}')"
if [ ! -s "$kdir/initramfs.cpio" ] || [ "$(cat "$kdir/initramfs.stamp" 2>/dev/null)" != "$want_stamp" ]; then
    log "building initramfs"
    stage="$(mktemp -d "$kdir/initramfs.XXXXXX")"
    mkdir -p "$stage"/{bin,dev,proc,sys,lower,rw,newroot,mods}
    cp /bin/busybox "$stage/bin/busybox"
    ln -s busybox "$stage/bin/sh"
    cp "$here/init" "$stage/init"
    chmod 755 "$stage/init"
    : >"$stage/mods/order"
    declare -A seen=()
    for m in "${initmods[@]}"; do
        while read -r kind path _; do
            [ "$kind" = insmod ] || continue
            b="$(basename "$path")"
            [ -n "${seen[$b]:-}" ] && continue
            seen[$b]=1
            cp "$path" "$stage/mods/$b"
            echo "$b" >>"$stage/mods/order"
        done < <(modprobe -d "$kdir/root" -S "$kver" --show-depends "$m")
    done
    echo "$kver" >"$stage/kver"
    # The kernel opens /dev/console as init's stdio before anything is mounted.
    mknod -m 600 "$stage/dev/console" c 5 1
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$kdir/initramfs.cpio.tmp"
    rm -rf "$stage"
    mv "$kdir/initramfs.cpio.tmp" "$kdir/initramfs.cpio"
    echo "$want_stamp" >"$kdir/initramfs.stamp"
fi

ln -sfn "$(basename "$kdir")" "$cache/current.tmp" && mv -T "$cache/current.tmp" "$cache/current"
[ "${FAN_VM_QUIET:-0}" = 1 ] || log "ready: kernel $kver ($(cat "$kdir/pkgversion")) in $kdir"
