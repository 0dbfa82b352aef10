//! The guest's initramfs: busybox-static, the `/init` script, the helper scripts and a few
//! kernel modules, as a gzip-compressed newc cpio archive.
//!
//! Processes started by `/init` (all long-lived; `comm` is the file name executed, because
//! the `vmi_*` binaries are hard links of busybox and scripts are named after their file):
//!
//! | comm | what | why |
//! |---|---|---|
//! | `vmi_sleeper` | busybox `sleep 100000` (argv\[0\] `sleep`), env `VMI_ENV_MARKER=VMI-ENV-MARKER-5a17c0de` | known argv and environment strings |
//! | `vmi_mapper` | busybox `sleep 100001`, fd 3 open on `/etc/vmi-fd-target`, fd 4 on `/tmp/vmi-fd-out` | file-backed mappings (its executable `/bin/vmi_mapper`) and open files |
//! | `vmi_parent` | shell script, parent of two `vmi_child` | a small process tree |
//! | `vmi_child` (x2) | busybox `sleep 100002` / `sleep 100003` | children of `vmi_parent` |
//! | `vmi_loop` | shell script looping `sleep 1` (its `sleep` child is transient) | a process that regularly runs |
//! | `vmi_user` | busybox `sleep 100004` as uid/gid 1000 (user `vmi`, via `su`) | non-root credentials |
//!
//! With [`crate::GuestConfig::control`] (`vmi_ctl` on the kernel command line), `/init`
//! starts `vmi_ctl` once the truth is printed: it runs the commands the host sends on the
//! second serial port ([`crate::TestGuest::run`]). The workloads it can run:
//!
//! | command | what it does | truth it prints (after the run) |
//! |---|---|---|
//! | `vmi_execs N` | N execs of known programs with known arguments, some opening known files, by its child `vmi_exec_loop` | `pid P` (the loop's pid), then per exec `exec I FILENAME\|ARGV0\|ARGV1…`, per file `open I PATH` |
//! | `vmi_opens N` | N `openat`s of `/etc/hostname` by the shell itself (no fork): a busy process | `pid P` |

//!
//! The realistic userland ([`build_realistic`], files in `src/realistic/`) adds Debian
//! programs and production-shaped processes; see the crate README.

use std::io::Write;

use crate::cpio::CpioBuilder;
use crate::error::{Error, Result};

/// Names of the busybox hard links in `/bin` (besides `busybox` itself).
pub const BUSYBOX_LINKS: &[&str] = &["vmi_sleeper", "vmi_mapper", "vmi_child", "vmi_user"];

/// Contents of the file `vmi_mapper` holds open on fd 3.
pub const FD_TARGET_CONTENT: &str = "VMI-FD-TARGET-1c3b9e07\n";

/// Kernel symbols whose runtime address goes into the truth (those absent in a kernel are
/// simply missing from [`crate::Truth::ksyms`]).
pub const TRUTH_KSYMS: &[&str] = &[
    "_text",
    "_stext",
    "_etext",
    "_sdata",
    "_edata",
    "_end",
    "init_task",
    "linux_banner",
    "init_top_pgt",
    "swapper_pg_dir",
    "page_offset_base",
    "vmemmap_base",
    "vmalloc_base",
    "phys_base",
    "vmcoreinfo_note",
    "vmcoreinfo_data",
    "hrtimer_nanosleep",
    "do_nanosleep",
    "__x64_sys_nanosleep",
    "__x64_sys_getpid",
    "__schedule",
    "schedule",
    "jiffies",
    "jiffies_64",
    "entry_SYSCALL_64",
    "asm_exc_divide_error",
    "asm_exc_page_fault",
    "idt_table",
    "__start_BTF",
    "__stop_BTF",
    "kallsyms_num_syms",
    "kallsyms_names",
    "kallsyms_offsets",
    "kallsyms_relative_base",
    "kallsyms_token_table",
    "kallsyms_token_index",
    "kallsyms_markers",
    "kallsyms_seqs_of_names",
    "modules",
    "init_mm",
    "mem_section",
    "prb",
    "__per_cpu_offset",
    "current_task",
    "pcpu_hot",
];

const VMI_LOOP: &str = r#"#!/bin/sh
# comm is "vmi_loop": the kernel names a script's process after the script file.
VMI_LOOP_MARKER="VMI-LOOP-MARKER-c0ffee42"
n=0
while :; do n=$((n+1)); echo "$n" > /tmp/vmi_loop.count; sleep 1; done
"#;

/// The host's command channel (second serial port, `ttyS1`, raw): one request line
/// `ID COMMAND`, answered by `VMI_CTL_BEGIN ID`, the command's output, `VMI_CTL_END ID RC`.
const VMI_CTL: &str = r#"#!/bin/sh
stty -F /dev/ttyS1 raw -echo || { echo "vmi_ctl: no /dev/ttyS1"; exit 1; }
exec 3<>/dev/ttyS1
while IFS= read -r line <&3; do
  id=${line%% *}
  printf 'VMI_CTL_BEGIN %s\n' "$id" >&3
  /bin/sh -c "${line#* }" </dev/null >&3 2>&1
  printf 'VMI_CTL_END %s %s\n' "$id" "$?" >&3
done
"#;

/// `vmi_execs N`: prepares `/tmp/vmi-w` and runs `vmi_exec_loop N`, then prints the
/// loop's truth. The known execs come from the loop's process alone (its comm is
/// `vmi_exec_loop`), none from the preparation.
const VMI_EXECS: &str = r#"#!/bin/sh
n=${1:-1000}
w=/tmp/vmi-w
rm -rf $w; mkdir -p $w
for k in 0 1 2 3 4 5 6 7; do echo "vmi-w-$k" > $w/f$k; done
printf '#!/bin/busybox sh\n:\n' > $w/script; chmod 755 $w/script
/bin/vmi_exec_loop "$n" > $w/truth || exit
cat $w/truth
"#;

/// `vmi_exec_loop N`: N execs of known commands, in three shapes: a program with an
/// argument, a program opening a known file, a script (the kernel runs its `#!`
/// interpreter) with an argument holding a space and an empty argument. Explicit paths
/// only (no `PATH` lookup, the same in both userlands); only shell builtins besides.
const VMI_EXEC_LOOP: &str = r#"#!/bin/sh
w=/tmp/vmi-w
echo "pid $$"
i=0
while [ $i -lt $1 ]; do
  i=$((i+1))
  case $((i % 3)) in
    0) /bin/busybox true "vmi-exec-$i"
       echo "exec $i /bin/busybox|/bin/busybox|true|vmi-exec-$i" ;;
    1) k=$((i % 8))
       /bin/busybox cat $w/f$k > /dev/null
       echo "exec $i /bin/busybox|/bin/busybox|cat|$w/f$k"
       echo "open $i $w/f$k" ;;
    2) $w/script "arg $i" ''
       echo "exec $i $w/script|$w/script|arg $i|" ;;
  esac
done
"#;

/// `vmi_opens N`: N `openat`s by the shell itself (a redirection of the `:` builtin).
const VMI_OPENS: &str = r#"#!/bin/sh
n=${1:-10000}
i=0
while [ $i -lt $n ]; do : < /etc/hostname; i=$((i+1)); done
echo "pid $$"
"#;

const VMI_PARENT: &str = r#"#!/bin/sh
# A small process tree: vmi_parent -> vmi_child x2 (busybox sleep via hard links).
( exec -a sleep /bin/vmi_child 100002 ) &
( exec -a sleep /bin/vmi_child 100003 ) &
wait
while :; do sleep 3600; done
"#;

/// The shell lines starting the classic processes (both userlands).
const CLASSIC_START: &str = r#"( export VMI_ENV_MARKER=VMI-ENV-MARKER-5a17c0de; exec -a sleep /bin/vmi_sleeper 100000 ) &
( exec 3</etc/vmi-fd-target 4>/tmp/vmi-fd-out; exec -a sleep /bin/vmi_mapper 100001 ) &
/bin/vmi_parent &
/bin/vmi_loop &
su -s /bin/sh vmi -c 'exec -a sleep /bin/vmi_user 100004' &
"#;

fn init_script() -> String {
    let ksym_re = TRUTH_KSYMS.join("|");
    format!(
        r#"#!/bin/busybox sh
# PID 1 of the VMI test guest (generated by the vmi-test-guest crate).
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
# Keep kernel messages off the console so they cannot split truth lines.
dmesg -n 1
hostname vmiguest
# Decided now, before the truth: after it nothing may fork but what the host asked for (a
# background list would leave a zombie child of this shell, which never reaps it).
ctl=; grep -qw vmi_ctl /proc/cmdline && ctl=1
for m in $(cat /lib/modules/load-order 2>/dev/null); do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done

# --- recognisable long-lived processes ---
{CLASSIC_START}# let them exec before the snapshot
i=0
while [ $i -lt 300 ]; do
  [ "$(pidof vmi_child | wc -w)" = 2 ] && [ "$(pidof vmi_sleeper vmi_mapper vmi_loop vmi_user | wc -w)" = 4 ] && break
  sleep 0.1; i=$((i+1))
done
# The processes blocked by design (all but vmi_loop): wait until they sleep, so the state
# the truth prints is the one memory holds later.
blocked=$(pidof vmi_sleeper vmi_mapper vmi_parent vmi_child vmi_user)
i=0
while [ $i -lt 200 ]; do
  busy=
  for p in $blocked; do
    {{ read -r s < /proc/$p/stat; }} 2>/dev/null
    s=${{s##*) }}
    [ "${{s%% *}}" = S ] || busy=1
  done
  [ -z "$busy" ] && break
  sleep 0.05; i=$((i+1))
done

# --- ground truth for the host ---
echo VMI_TRUTH_BEGIN
echo "release $(uname -r)"
echo "version $(cat /proc/version)"
echo "cmdline $(cat /proc/cmdline)"
echo "hostname $(hostname)"
echo "uptime $(cat /proc/uptime)"
echo "ncpus $(grep -c ^processor /proc/cpuinfo)"
echo "cpuflags $(grep -m1 ^flags /proc/cpuinfo | cut -d: -f2)"
for v in /sys/devices/system/cpu/vulnerabilities/*; do
  [ -r "$v" ] && echo "vuln ${{v##*/}} $(cat $v)"
done
echo "userland busybox"
for p in $blocked; do echo "blocked $p"; done
marked=
for d in /proc/[0-9]*; do
  name= state= tgid= pid= ppid= uid=
  # tasks may exit while we look (e.g. vmi_loop's sleep): silence the failed redirection
  {{ while read -r k v rest; do
    case "$k" in
      Name:) name="$v${{rest:+ $rest}}" ;;
      State:) state=$v ;;
      Tgid:) tgid=$v ;;
      Pid:) pid=$v ;;
      PPid:) ppid=$v ;;
      Uid:) uid=$v; break ;;
    esac
  done < $d/status; }} 2>/dev/null
  [ -n "$pid" ] || continue
  echo "task $pid $ppid $tgid $uid $state $name"
  case "$name" in vmi_*) marked="$marked $pid" ;; esac
done
for p in $marked; do
  [ -r /proc/$p/stat ] || continue
  read -r stat < /proc/$p/stat
  comm=$(cat /proc/$p/comm)
  set -- ${{stat##*) }}
  # after "pid (comm) " the fields start at 3: shift to 48..51
  shift 45
  echo "proc $p $1 $2 $3 $4 $comm"
  tr '\0' '\n' < /proc/$p/cmdline | while IFS= read -r a; do echo "argv $p $a"; done
  tr '\0' '\n' < /proc/$p/environ | while IFS= read -r a; do echo "environ $p $a"; done
  while IFS= read -r l; do echo "maps $p $l"; done < /proc/$p/maps
  for f in /proc/$p/fd/*; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    echo "fd $p ${{f##*/}} $(readlink $f)"
  done
done
while IFS= read -r l; do echo "module $l"; done < /proc/modules
grep -E ' ({ksym_re})$' /proc/kallsyms | while IFS= read -r l; do echo "ksym $l"; done
while IFS= read -r l; do echo "iomem $l"; done < /proc/iomem
[ -r /sys/kernel/vmcoreinfo ] && echo "vmcoreinfo_note $(cat /sys/kernel/vmcoreinfo)"
dmesg | grep -iE 'page tables isolation|5-level paging|Linux version|Command line:|KASLR|x86/cpu:' | while IFS= read -r l; do echo "bootmsg $l"; done
dmesg | tail -n 20 | while IFS= read -r l; do echo "dmesg $l"; done
echo VMI_TRUTH_END
if grep -qw vmi_kallsyms /proc/cmdline; then
  echo VMI_KALLSYMS_BEGIN; cat /proc/kallsyms; echo VMI_KALLSYMS_END
fi
echo VMI_GUEST_READY
# PID 1 must never exit (a panic makes QEMU exit: -no-reboot, panic=1).
if [ -n "$ctl" ]; then /bin/vmi_ctl & fi
if grep -qw vmi_shell /proc/cmdline; then while :; do setsid cttyhack sh; done; fi
while :; do sleep 3600; done
"#
    )
}

/// Build the gzip-compressed initramfs from the busybox binary and the kernel modules
/// (`(name, uncompressed .ko bytes)`, loaded in the given order).
pub fn build(busybox: &[u8], modules: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut c = CpioBuilder::new();
    let mut dirs = std::collections::BTreeSet::new();
    add_common(&mut c, &mut dirs, modules)?;
    let mut links = vec!["bin/busybox".to_owned()];
    links.extend(BUSYBOX_LINKS.iter().map(|l| format!("bin/{l}")));
    let link_refs: Vec<&str> = links.iter().map(String::as_str).collect();
    c.hard_linked(&link_refs, 0o755, busybox.to_vec());
    c.symlink("bin/sh", "busybox");
    c.file("init", 0o755, init_script());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&c.to_bytes())
        .map_err(Error::io("gzip", "initramfs"))?;
    gz.finish().map_err(Error::io("gzip", "initramfs"))
}

/// Files of the realistic guest (`src/realistic/`): `(path in the guest, mode, contents)`.
pub const REALISTIC_FILES: &[(&str, u32, &str)] = &[
    (
        "opt/vmi/vmilib.py",
        0o644,
        include_str!("realistic/vmilib.py"),
    ),
    (
        "opt/vmi/vmi_server",
        0o755,
        include_str!("realistic/vmi_server"),
    ),
    (
        "opt/vmi/vmi_manyvma",
        0o755,
        include_str!("realistic/vmi_manyvma"),
    ),
    (
        "opt/vmi/vmi_files",
        0o755,
        include_str!("realistic/vmi_files"),
    ),
    (
        "opt/vmi/vmi_zparent",
        0o755,
        include_str!("realistic/vmi_zparent"),
    ),
    (
        "opt/vmi/vmi_fileless",
        0o755,
        include_str!("realistic/vmi_fileless"),
    ),
    (
        "opt/vmi/vmi_ctr_init",
        0o755,
        include_str!("realistic/vmi_ctr_init"),
    ),
    (
        "opt/vmi/vmi_ctr_app",
        0o755,
        include_str!("realistic/vmi_ctr_app"),
    ),
    (
        "opt/vmi/vmi_userbash",
        0o755,
        include_str!("realistic/vmi_userbash"),
    ),
    (
        "opt/vmi/vmi_adversary",
        0o755,
        include_str!("realistic/vmi_adversary"),
    ),
    (
        "opt/vmi/vmi_truth",
        0o755,
        include_str!("realistic/vmi_truth"),
    ),
];

const REALISTIC_INIT: &str = include_str!("realistic/init.sh");

fn realistic_init_script() -> String {
    REALISTIC_INIT.replace("@CLASSIC@\n", CLASSIC_START)
}

/// The files both userlands share: device nodes, the classic scripts, `/etc`, the kernel
/// modules. `dirs` records the directories created.
fn add_common(
    c: &mut CpioBuilder,
    dirs: &mut std::collections::BTreeSet<String>,
    modules: &[(String, Vec<u8>)],
) -> Result<()> {
    for d in [
        "bin",
        "dev",
        "etc",
        "proc",
        "sys",
        "tmp",
        "run",
        "lib",
        "lib/modules",
    ] {
        if dirs.insert(d.to_owned()) {
            c.dir(d, 0o755);
        }
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.char_dev("dev/null", 0o666, 1, 3);
    c.file("bin/vmi_loop", 0o755, VMI_LOOP);
    c.file("bin/vmi_parent", 0o755, VMI_PARENT);
    c.file("bin/vmi_ctl", 0o755, VMI_CTL);
    c.file("bin/vmi_execs", 0o755, VMI_EXECS);
    c.file("bin/vmi_exec_loop", 0o755, VMI_EXEC_LOOP);
    c.file("bin/vmi_opens", 0o755, VMI_OPENS);
    c.file("etc/vmi-fd-target", 0o644, FD_TARGET_CONTENT);
    c.file("etc/hostname", 0o644, "vmiguest\n");
    c.file(
        "etc/passwd",
        0o644,
        "root:x:0:0:root:/:/bin/sh\nvmi:x:1000:1000:vmi:/tmp:/bin/sh\n",
    );
    c.file("etc/group", 0o644, "root:x:0:\nvmi:x:1000:\n");
    let mut order = String::new();
    for (name, ko) in modules {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::Config(format!("bad module name `{name}`")));
        }
        c.file(&format!("lib/modules/{name}.ko"), 0o644, ko.clone());
        order.push_str(name);
        order.push('\n');
    }
    c.file("lib/modules/load-order", 0o644, order);
    Ok(())
}

/// Build the gzip-compressed initramfs of the realistic userland from the unpacked
/// packages and the kernel modules. Returns the archive and what went into it.
pub fn build_realistic(
    staged: &crate::userland::Staged,
    modules: &[(String, Vec<u8>)],
) -> Result<(Vec<u8>, crate::userland::Added)> {
    use crate::userland;
    let mut c = CpioBuilder::new();
    let mut dirs = std::collections::BTreeSet::new();
    add_common(&mut c, &mut dirs, modules)?;
    let busybox_path = staged.root.join(userland::BUSYBOX);
    let busybox = crate::cache::read(&busybox_path)?;
    let mut links = vec![userland::BUSYBOX.to_owned()];
    links.extend(BUSYBOX_LINKS.iter().map(|l| format!("bin/{l}")));
    let link_refs: Vec<&str> = links.iter().map(String::as_str).collect();
    c.hard_linked(&link_refs, 0o755, busybox);
    c.symlink("bin/sh", "busybox");
    let added = userland::add_files(staged, &mut c, &mut dirs)?;
    for d in ["opt", "opt/vmi", "srv", "etc/vmi", "etc/dropbear"] {
        if dirs.insert(d.to_owned()) {
            c.dir(d, 0o755);
        }
    }
    for (path, mode, text) in REALISTIC_FILES {
        c.file(path, *mode, *text);
    }
    c.symlink("opt/vmi/vmi_cat", "/bin/cat");
    c.symlink("opt/vmi/vmi_orphan", "/bin/sleep");
    let mut ksyms = TRUTH_KSYMS.join("\n");
    ksyms.push('\n');
    c.file("etc/vmi/ksyms", 0o644, ksyms);
    c.file("init", 0o755, realistic_init_script());
    // Level 1: the archive is ~30 MB; compressing harder saves little and costs seconds.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&c.to_bytes())
        .map_err(Error::io("gzip", "initramfs"))?;
    let img = gz.finish().map_err(Error::io("gzip", "initramfs"))?;
    Ok((img, added))
}

/// A digest of the realistic guest's own files (scripts, init), part of its cache key.
pub fn realistic_digest() -> u64 {
    let mut h = Fnv::default();
    h.write(&script_digest().to_le_bytes());
    h.write(realistic_init_script().as_bytes());
    for (path, mode, text) in REALISTIC_FILES {
        h.write(path.as_bytes());
        h.write(&mode.to_le_bytes());
        h.write(text.as_bytes());
        h.write(&[0]);
    }
    h.0
}

/// A digest of everything that goes into the initramfs except busybox and the modules (so
/// a changed script invalidates cached archives).
pub fn script_digest() -> u64 {
    let mut h = Fnv::default();
    for s in [
        init_script().as_str(),
        VMI_LOOP,
        VMI_PARENT,
        VMI_CTL,
        VMI_EXECS,
        VMI_EXEC_LOOP,
        VMI_OPENS,
        FD_TARGET_CONTENT,
    ] {
        h.write(s.as_bytes());
        h.write(&[0]);
    }
    h.0
}

/// FNV-1a, 64 bit: a stable digest for cache keys (not for security).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv(pub(crate) u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}
