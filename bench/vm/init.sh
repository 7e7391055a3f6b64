#!/bin/busybox sh
# PID 1 of the guest bench/vm/run.py starts (busybox ash). Its settings come from the
# kernel command line, as environment variables:
#   vmmode     qemu (this file is /init of an initramfs; the host's root is 9p tag
#              hostroot, the control directory tag vmctl) or uml (User-Mode Linux: the
#              root already is the host's, read-only, over hostfs; vmctl is a host path)
#   vmmodules  comma-separated .ko paths to insmod, dependencies first
#   vmshares   comma-separated TAG:PATH, read-write shares to mount at PATH
# and from the control directory: limits (MSIZE, NOFILE, SYSCTLS), job.sh (the command).
# It mounts the host's root under a tmpfs overlay at $W/newroot with the guest's own
# proc/sys/dev/tmp/run and the shares, brings up lo, raises the limits, runs job.sh
# chrooted there, writes its exit status to the control directory's rc, powers off.
# Whatever fails, it ends in a power-off: the guest then exits.

B=/bin/busybox
# proc first, by busybox's full path: this busybox's ash runs applets by exec'ing
# /proc/self/exe, which before proc is mounted is, in UML, the host's (the UML kernel).
$B mount -t proc proc /proc || exit 1
if [ "$vmmode" = uml ]; then
    # The root is the host's and read-only: the work area is a tmpfs over /run.
    $B mount -t tmpfs -o mode=755 vm /run || exit 1
    W=/run/vm
else
    W=/run
fi
$B mkdir -p $W/bin $W/lower $W/upper $W/newroot $W/ctl
for applet in $($B --list); do
    $B ln -sf $B $W/bin/$applet
done
export PATH=$W/bin

say() { echo "vm-init: $*"; }
off() {
    sync
    for m in $(cut -d' ' -f2 /proc/mounts | grep "^$W/newroot/" | sort -r); do
        umount "$m" 2>/dev/null
    done
    sync
    poweroff -f
    sleep 5
}
fail() {
    say "$*"
    [ -f $W/ctl/job.sh ] && echo 125 >$W/ctl/rc
    off
}

mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/null

for ko in $(echo "$vmmodules" | tr , ' '); do
    insmod "$ko" || say "insmod $ko failed"
done

# share TAG HOSTPATH TARGET [ro] [cache]
share() {
    if [ "$vmmode" = uml ]; then
        mount -t hostfs ${4:+-r} -o "$2" none "$3"
    else
        mount -t 9p -o "trans=virtio,version=9p2000.L,msize=${MSIZE:-262144}${4:+,ro},cache=${5:-none}" "$1" "$3"
    fi
}
share vmctl "$vmctl" $W/ctl || fail "cannot mount the control directory ($vmctl)"
. $W/ctl/limits

# The host's root, read-only. 9p: cache=loose, since every lookup costs a round trip
# to qemu and the files change little while a job runs.
share hostroot / $W/lower ro loose || fail "cannot mount the host's root"
mount -t tmpfs -o mode=755 upper $W/upper
mkdir -p $W/upper/data $W/upper/work
if ! mount -t overlay -o lowerdir=$W/lower,upperdir=$W/upper/data,workdir=$W/upper/work \
    overlay $W/newroot; then
    say "overlay failed: the root stays read-only"
    mount --bind $W/lower $W/newroot
fi
R=$W/newroot
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mount -t tmpfs -o mode=1777 tmp $R/tmp
mount -t tmpfs -o mode=755 run $R/run
mkdir -p $R/run/vm
mount --bind $W/ctl $R/run/vm
for s in $(echo "$vmshares" | tr , ' '); do
    tag=${s%%:*}
    dir=${s#*:}
    mkdir -p "$R$dir"
    share "$tag" "$dir" "$R$dir" || fail "cannot mount $tag at $dir"
done

ip link set lo up || fail "cannot bring up lo"
for kv in $SYSCTLS; do
    key=${kv%%=*}
    value=$(echo "${kv#*=}" | tr , ' ')
    echo "$value" >"/proc/sys/$(echo "$key" | tr . /)" || fail "cannot set $key"
done
ulimit -H -n "$NOFILE" && ulimit -S -n "$NOFILE" || fail "cannot raise RLIMIT_NOFILE"

say "Linux $(uname -r) ($vmmode), $(grep -c ^processor /proc/cpuinfo) vCPU(s)," \
    "$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)," \
    "RLIMIT_NOFILE $(ulimit -n), ports $(tr '\t' - </proc/sys/net/ipv4/ip_local_port_range)"
chroot $R /bin/sh /run/vm/job.sh
rc=$?
echo "$rc" >$W/ctl/rc
off
