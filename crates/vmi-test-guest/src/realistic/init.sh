#!/bin/busybox sh
# PID 1 of the realistic VMI test guest (vmi-test-guest, src/realistic/init.sh).
# Busybox applets go to /usr/local/bin, first in PATH; the Debian programs keep their paths.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /srv /usr/local/bin
/bin/busybox --install -s /usr/local/bin
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
exec </dev/console >/dev/console 2>&1
# Keep kernel messages off the console so they cannot split truth lines.
dmesg -n 1
hostname vmiguest
# Decided now, before the truth: after it nothing may fork but what the host asked for (a
# background list would leave a zombie child of this shell, which never reaps it).
ctl=; grep -qw vmi_ctl /proc/cmdline && ctl=1
for m in $(cat /lib/modules/load-order 2>/dev/null); do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
ip link set lo up
mkdir -p /run/vmi/ready /etc/dropbear
chmod 1777 /run/vmi/ready
mkfifo -m 666 /run/vmi/never

# --- the classic processes (as in the busybox guest) ---
@CLASSIC@

# --- processes shaped like production ones ---
export VMI_ROLE=workload
/opt/vmi/vmi_server &
/opt/vmi/vmi_manyvma &
/opt/vmi/vmi_files &
/opt/vmi/vmi_zparent &
/opt/vmi/vmi_fileless &
# a program deleted once it runs
cp /bin/busybox /tmp/vmi_delexe
( exec -a sleep /tmp/vmi_delexe 100005 ) &
unshare -p -m -u -f /opt/vmi/vmi_ctr_init &
su -s /bin/bash vmi -c 'exec /opt/vmi/vmi_userbash' &
# An unprivileged user planting decoys for VMI tools in its own memory (issue 14).
su -s /bin/sh vmi -c 'exec /opt/vmi/vmi_adversary' &
sh -c '/opt/vmi/vmi_orphan infinity &'
/usr/sbin/dropbear -F -E -R -p 127.0.0.1:2222 -P /run/dropbear.pid 2>>/run/dropbear.log &
unset VMI_ROLE

i=0
while [ -z "$(pidof vmi_delexe)" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
rm /tmp/vmi_delexe

# --- ground truth for the host (printed once everything above is blocked) ---
/opt/vmi/vmi_truth
if grep -qw vmi_kallsyms /proc/cmdline; then
  echo VMI_KALLSYMS_BEGIN; cat /proc/kallsyms; echo VMI_KALLSYMS_END
fi
echo VMI_GUEST_READY
# PID 1 must never exit (a panic makes QEMU exit: -no-reboot, panic=1). It blocks opening
# a FIFO nobody writes: no periodic wake-up.
if [ -n "$ctl" ]; then /bin/vmi_ctl & fi
if grep -qw vmi_shell /proc/cmdline; then while :; do setsid cttyhack sh; done; fi
while :; do read -r _ < /run/vmi/never; done
