#!/usr/bin/env bash
# Kernel matrix: runs netmangle's kernel-facing tests on this machine's kernel and on Debian 12's
# stock kernel booted under qemu (software emulation: /dev/kvm on these machines is kvm-pvm, which
# boots no stock kernel), then prints one table, test file × kernel.
#
#   scripts/kernel-matrix.sh [--guest-only] [FILTER…]
#
# FILTERs are substrings of the compiled test paths (as for scripts/run-tests.mjs); without any,
# the default set below. Tests run on the already built dist/ of this checkout (npm run build).
# The kernel package is fetched with apt-get download and unpacked with dpkg-deb -x into
# NETMANGLE_KERNEL_CACHE (default /var/cache/netmangle/kernels), never installed. The guest sees
# this machine's root read-only over 9p under a tmpfs overlay, so its writes stay in the guest;
# results come back over a second, writable 9p share. Results: NETMANGLE_MATRIX_RESULTS (default
# results/kernel-matrix/ in the checkout): kernel-matrix.md, kernel-matrix.json, logs/.
# The guest is stopped after NETMANGLE_MATRIX_TIMEOUT seconds (default 3600). CI and
# NETMANGLE_SLOW (default 8 in the guest: it runs 5-10x slower) are passed into the guest.
# Exits 1 if any test failed in the guest or the guest gave no complete results.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$(pwd -P)

default_filters=(
  test/kernel/ test/e2e/ test/faults/lab- test/delay/ test/elf/kernel-objects test/lab/
  test/bpf/helpers-kernel test/vm/kernel
)
guest_only=0
filters=()
for a in "$@"; do
  case "$a" in
    --guest-only) guest_only=1 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "kernel-matrix: unknown option $a (try --help)" >&2; exit 2 ;;
    *) filters+=("$a") ;;
  esac
done
[ "${#filters[@]}" -gt 0 ] || filters=("${default_filters[@]}")

cache=${NETMANGLE_KERNEL_CACHE:-/var/cache/netmangle/kernels}
results_dir=${NETMANGLE_MATRIX_RESULTS:-$checkout/results/kernel-matrix}
timeout_s=${NETMANGLE_MATRIX_TIMEOUT:-3600}
slow=${NETMANGLE_SLOW:-8}

say() { echo "kernel-matrix: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (the tests attach programs; qemu's 9p share of / needs it too)"
for tool in qemu-system-x86_64 busybox apt-get dpkg-deb depmod modprobe node; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/setup.sh installs what this needs)"
done
[ -d dist/test ] || die "no dist/test: build first (npm run build)"

tmp=$(mktemp -d /tmp/nm-matrix.XXXXXX)
qemu_pid=
tail_pid=
cleanup() {
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then kill "$qemu_pid" 2>/dev/null || true; sleep 1; kill -9 "$qemu_pid" 2>/dev/null || true; fi
  if [ -n "$tail_pid" ]; then kill "$tail_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the kernel: the linux-image-6.1.0-*-amd64 that Debian's linux-image-amd64 depends on ----
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-6\.1\.0-[0-9]+-amd64$/ { print $2; exit }')
[ -n "$pkg" ] || die "apt-cache finds no linux-image-6.1.0-*-amd64 that linux-image-amd64 depends on (is this Debian 12 with apt lists? try apt-get update)"
kver=${pkg#linux-image-}
kdir=$cache/$kver
if [ ! -e "$kdir/.ready" ]; then
  say "fetching $pkg into $kdir"
  rm -rf "$kdir"
  mkdir -p "$kdir/deb"
  (cd "$kdir/deb" && apt-get download -q "$pkg" 2>&1 | grep -v 'pkgAcquire::Run' >&2) || die "apt-get download $pkg failed"
  dpkg-deb -x "$kdir"/deb/*.deb "$kdir/root"
  # The package ships no modules.dep: it is made at install time, which we skip.
  depmod -b "$kdir/root" "$kver"
  touch "$kdir/.ready"
fi
vmlinuz=$kdir/root/boot/vmlinuz-$kver
modules=$kdir/root/lib/modules/$kver
[ -f "$vmlinuz" ] && [ -d "$modules" ] || die "$kdir is incomplete: remove it and run again"

# --- the initramfs: busybox, the modules the 9p + overlay root needs, and init.sh -------------
mkdir -p "$tmp/initramfs"/{bin,modules,proc,sys,dev}
cp /bin/busybox "$tmp/initramfs/bin/busybox"
ldd "$tmp/initramfs/bin/busybox" >/dev/null 2>&1 && die "/bin/busybox is not static (install busybox-static)"
cp scripts/kernel-matrix/init.sh "$tmp/initramfs/init"
chmod +x "$tmp/initramfs/init"
: > "$tmp/initramfs/modules/order"
for m in virtio_pci 9pnet_virtio 9p overlay; do
  modprobe -d "$kdir/root" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' | while read -r ko; do
  cp "$ko" "$tmp/initramfs/modules/"
  basename "$ko" >> "$tmp/initramfs/modules/order"
done
grep -q '^netfs.ko$' "$tmp/initramfs/modules/order" || die "9p's dependencies did not include netfs (kernel $kver)"
(cd "$tmp/initramfs" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$tmp/initrd.gz"

# --- the host's column ------------------------------------------------------------------------
mkdir -p "$results_dir"
rm -rf "$results_dir/logs"
if [ "$guest_only" -eq 0 ]; then
  say "host $(uname -r): running ${filters[*]}"
  node scripts/kernel-matrix/tests.mjs run "$tmp/host.json" "$results_dir/logs/host" "${filters[@]}" || true
fi

# --- the guest ----------------------------------------------------------------------------------
share=$tmp/share
mkdir -p "$share"
{
  printf 'export CI=%q\n' "${CI:-}"
  printf 'export NETMANGLE_SLOW=%q\n' "$slow"
  printf 'export NETMANGLE_MATRIX_FILE_TIMEOUT=%q\n' "${NETMANGLE_MATRIX_FILE_TIMEOUT:-900}"
  printf 'NM_MODULES=%q\n' "$modules"
  printf 'NM_FILTERS=%q\n' "${filters[*]}"
} > "$share/config"
guest_results=/nm-results
say "guest $kver: booting (timeout ${timeout_s} s)"
t0=$(date +%s)
: > "$tmp/console.log"
timeout -k 10 "$timeout_s" qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu max -smp 2 -m 4G -nographic -no-reboot -nic none \
  -kernel "$vmlinuz" -initrd "$tmp/initrd.gz" \
  -append "console=ttyS0 panic=-1 quiet loglevel=4 nm.checkout=$checkout nm.results=$guest_results" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs "local,path=$share,mount_tag=results,security_model=none" \
  < /dev/null > "$tmp/console.log" 2>&1 &
qemu_pid=$!
tail --pid="$qemu_pid" -n +1 -f "$tmp/console.log" &
tail_pid=$!
qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
qemu_pid=
wait "$tail_pid" 2>/dev/null || true
tail_pid=
guest_seconds=$(( $(date +%s) - t0 ))
[ "$qemu_rc" -eq 124 ] && say "guest stopped by the timeout after ${timeout_s} s"
say "guest ran ${guest_seconds} s (boot to poweroff), qemu exit $qemu_rc, guest tests exit $(cat "$share/guest.rc" 2>/dev/null || echo none)"

cp "$tmp/console.log" "$results_dir/guest-console.log"
mkdir -p "$results_dir/logs"
[ -d "$share/logs" ] && cp -r "$share/logs" "$results_dir/logs/guest"
[ -f "$share/guest.json" ] && cp "$share/guest.json" "$results_dir/guest.json"
[ -f "$tmp/host.json" ] && cp "$tmp/host.json" "$results_dir/host.json"
node scripts/kernel-matrix/tests.mjs table "$tmp/host.json" "$share/guest.json" "$results_dir"
