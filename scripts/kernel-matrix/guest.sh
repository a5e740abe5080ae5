#!/bin/sh
# Runs inside the kernel matrix's guest, chrooted into the host's root (read-only 9p under a
# tmpfs overlay): mounts what netmangle and its tests need, loads the modules the tests use,
# then runs the chosen test files of the checkout with scripts/kernel-matrix/tests.mjs.
# Arguments: CHECKOUT RESULTS (the writable results share; RESULTS/config holds the settings).
set -u
checkout=$1
results=$2
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
# shellcheck source=/dev/null
. "$results/config"

say() { echo "matrix-guest: $*"; }

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# /tmp stays the overlay's (writes land in its tmpfs): the checkout may live under /tmp.
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup

# The guest kernel's modules live in the host's cache (seen through the 9p root); /lib/modules is
# on the overlay, so a link makes plain modprobe (and the kernel's autoloading) find them.
kver=$(uname -r)
mkdir -p /lib/modules
rm -rf "/lib/modules/$kver"
ln -s "$NM_MODULES" "/lib/modules/$kver"
echo /sbin/modprobe > /proc/sys/kernel/modprobe
for m in veth bridge sch_ingress cls_bpf tun; do
  modprobe "$m" || say "modprobe $m failed"
done
ip link set lo up
# ss asks the kernel through sock_diag, which autoloads tcp_diag: proof that autoloading works.
ss -tin > /dev/null 2>&1
if grep -q '^tcp_diag ' /proc/modules; then say "module autoloading works"; else say "module autoloading does not work (no tcp_diag after ss)"; fi
hostname nm-guest-"$kver" 2>/dev/null || true

say "kernel $kver, $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB; CI=${CI:-unset} NETMANGLE_SLOW=${NETMANGLE_SLOW:-unset}"
cd "$checkout" || exit 1
# shellcheck disable=SC2086 # the filters are separate words
node scripts/kernel-matrix/tests.mjs run "$results/guest.json" "$results/logs" $NM_FILTERS
