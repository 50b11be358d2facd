#!/bin/sh
# pid 1 of the User-Mode Linux guest: mount what a host would have, pure cgroup v2, the UML
# kernel's modules; run the command the launcher left in the shared directory; write its exit
# status back; power off. The guest's root is the host's root, read-only (hostfs).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm 2>/dev/null
mount -t devpts devpts /dev/pts
for d in /tmp /run /dev/shm; do mount -t tmpfs tmpfs "$d"; done
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ver=$(uname -r)
# The read-only root has no /lib/modules/<uml version>: give modprobe a root of its own.
mkdir -p "/run/pti-mods/lib/modules/$ver"
mount --bind "/usr/lib/uml/modules/$ver" "/run/pti-mods/lib/modules/$ver"
for m in overlay veth bridge sch_netem sch_tbf ipv6; do modprobe -d /run/pti-mods "$m"; done
shared=$(sed -n 's/.*pti_shared=\([^ ]*\).*/\1/p' /proc/cmdline)
mkdir -p /run/pti-shared
mount -t hostfs -o "$shared" hostfs /run/pti-shared
ip link set lo up
. /run/pti-shared/env.sh
# A working directory under a directory that is a fresh tmpfs here (a checkout in /tmp, say)
# is mounted back from the host, read-only, at the same path.
case "$PTI_CWD" in
  /tmp/*|/run/*|/dev/shm/*)
    mkdir -p "$PTI_CWD"
    mount -r -t hostfs -o "$PTI_CWD" hostfs "$PTI_CWD" ;;
esac
cd "$PTI_CWD" || { echo "uml lane: cannot enter $PTI_CWD"; echo 125 > /run/pti-shared/status; echo o > /proc/sysrq-trigger; }
sh /run/pti-shared/cmd.sh
echo $? > /run/pti-shared/status
sync
echo o > /proc/sysrq-trigger
sleep 5
