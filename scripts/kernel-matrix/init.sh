#!/bin/busybox sh
# /init of the kernel matrix's initramfs (busybox only). Mounts the host's root (9p, read-only)
# under a tmpfs overlay, mounts the writable results share, and chroots into guest.sh. The
# kernel command line carries nm.checkout= (the checkout to test, same path as on the host)
# and nm.results= (where the results share is mounted inside the new root).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

say() { echo "matrix-init: $*" > /dev/console; }
die() { say "$*"; poweroff -f; }

checkout=
results=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    nm.checkout=*) checkout=${arg#nm.checkout=} ;;
    nm.results=*) results=${arg#nm.results=} ;;
  esac
done
[ -n "$checkout" ] && [ -n "$results" ] || die "nm.checkout= and nm.results= are required on the kernel command line"

# The root's modules, in the dependency order the host's modprobe --show-depends gave.
while read -r mod; do
  insmod "/modules/$mod" || die "insmod $mod failed"
done < /modules/order

mkdir -p /lower /rw /root
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro hostroot /lower || die "cannot mount the host root over 9p"
mount -t tmpfs -o size=2g tmpfs /rw || die "cannot mount the overlay's tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /root || die "cannot mount the overlay"
mkdir -p "/root$results"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results "/root$results" || die "cannot mount the results share"

# The kernel runs its module loader (/proc/sys/kernel/modprobe) in PID 1's root, which is this
# initramfs, not the chroot: this modprobe runs the root's own in it (ss needs tcp_diag, …).
mkdir -p /sbin
printf '#!/bin/sh\nexec /bin/chroot /root /sbin/modprobe "$@"\n' > /sbin/modprobe
chmod +x /sbin/modprobe

chroot /root /bin/sh "$checkout/scripts/kernel-matrix/guest.sh" "$checkout" "$results"
echo "$?" > "/root$results/guest.rc"
umount "/root$results"
sync
poweroff -f
