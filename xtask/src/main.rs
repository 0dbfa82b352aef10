//! `cargo xtask`: developer tasks for this workspace.
//!
//! ```text
//! cargo xtask guest build [--kernel SPEC] [--userland busybox|realistic]
//! cargo xtask guest up    --dir DIR [--kernel SPEC] [--cpu MODEL] [--smp N] [--mem MB]
//!                         [--no-kaslr] [--kallsyms] [--append WORD]... [--accel auto|tcg|kvm]
//!                         [--userland busybox|realistic]
//! cargo xtask guest dump  --dir DIR --format elf|kdump-zlib OUT
//! cargo xtask guest qmp   --dir DIR '<json>'|'hmp:<command>'...
//! cargo xtask guest down  --dir DIR
//! cargo xtask guest reap
//! cargo xtask xen smoke  [--xen 4.17|4.20] [--events N] [--timeout SECS]
//!                        [--profile release|dev] [--build-only | --prebuilt | --fetch-only]
//! cargo xtask xen headers [--xen 4.17|4.20]
//! cargo xtask hostile campaign --dump DUMP.elf [--mutations N] [--variants N] [--out DIR]
//! ```
//! All logic lives in the `vmi-test-guest` crate; this is a thin CLI over it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use vmi_test_guest::{Accel, DumpFormat, GuestConfig, GuestEnv, KernelSpec, TestGuest};

mod hostile;
mod xen;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer tasks for the VMI workspace")]
struct Cli {
    #[command(subcommand)]
    cmd: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Build, boot, inspect and stop the real Linux test guest.
    #[command(subcommand)]
    Guest(GuestCmd),
    /// Nested Xen under QEMU TCG: the smoke test of vmi-driver-xen.
    #[command(subcommand)]
    Xen(XenCmd),
    /// Hostile inputs: mutated dumps and decoy-planting guests against the `vmi` CLI.
    #[command(subcommand)]
    Hostile(HostileCmd),
}

#[derive(Subcommand)]
enum HostileCmd {
    /// Mutate a clean ELF dump of the test guest (headers, notes, kernel structures, page
    /// tables) and plant decoys in an unprivileged process's memory; run info, ps,
    /// modules, maps, files and dmesg on each; exit 0 only if nothing panicked, hung,
    /// exceeded the memory limit, or (decoys) changed the output.
    Campaign {
        /// The clean ELF dump (`cargo xtask guest dump`); it is copied, never modified.
        #[arg(long)]
        dump: PathBuf,
        /// The `vmi` binary (default: target/release/vmi, built if missing).
        #[arg(long)]
        vmi: Option<PathBuf>,
        /// Output directory (report.json).
        #[arg(long, default_value = "target/hostile")]
        out: PathBuf,
        /// Mutated dumps.
        #[arg(long, default_value_t = 1000)]
        mutations: usize,
        /// Decoy variants.
        #[arg(long, default_value_t = 50)]
        variants: usize,
        /// Seed.
        #[arg(long, default_value_t = 14)]
        seed: u64,
        /// Seconds per command before it counts as hung.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Peak memory per command, MiB.
        #[arg(long, default_value_t = 2048)]
        max_rss_mib: u64,
    },
}

#[derive(Subcommand)]
enum XenCmd {
    /// Boot Debian's Xen nested under QEMU TCG, start a PV and a PVH guest and run the
    /// driver against them from dom0; exit 0 only when every check passed.
    Smoke {
        /// Xen release: 4.17 (bookworm) or 4.20 (trixie).
        #[arg(long, default_value = "4.17")]
        xen: String,
        /// CR3-write events to handle from the PVH guest.
        #[arg(long, default_value_t = 50)]
        events: usize,
        /// Seconds before QEMU is killed.
        #[arg(long, default_value_t = 420)]
        timeout: u64,
        /// Cargo profile of the xen-smoke binary: `release` (in a target directory of
        /// its own) or `dev` (in the workspace's, sharing the dependencies the tests build).
        #[arg(long, default_value = "release")]
        profile: String,
        /// Only build the xen-smoke binary (as target/xen-smoke-VERSION/xen-smoke).
        #[arg(long, conflicts_with = "prebuilt")]
        build_only: bool,
        /// Use the binary an earlier `--build-only` left, without building.
        #[arg(long)]
        prebuilt: bool,
        /// Only download and unpack Xen, its tools, the kernel and Python (cached).
        #[arg(long, conflicts_with_all = ["prebuilt", "build_only"])]
        fetch_only: bool,
    },
    /// Download and unpack libxen-dev and its libraries (no install); print the root.
    Headers {
        /// Xen release: 4.17 (bookworm) or 4.20 (trixie, private apt configuration).
        #[arg(long, default_value = "4.17")]
        xen: String,
    },
}

#[derive(Subcommand)]
enum GuestCmd {
    /// Download/unpack the kernel and build the initramfs (cached); print the paths.
    Build {
        /// Kernel: `[suite:]package` (default bookworm:linux-image-cloud-amd64).
        #[arg(long, default_value = vmi_test_guest::DEFAULT_KERNEL)]
        kernel: String,
        /// Userland: `busybox` or `realistic` (Debian programs, every process in the
        /// truth); default `$VMI_GUEST_USERLAND`, else busybox.
        #[arg(long)]
        userland: Option<String>,
    },
    /// Build what is missing, boot, wait for the ready marker, write DIR/guest.env.
    Up {
        /// Guest directory (sockets, logs, guest.env, truth.json).
        #[arg(long)]
        dir: PathBuf,
        /// Kernel: `[suite:]package`, e.g. `trixie:linux-image-cloud-amd64`.
        #[arg(long, default_value = vmi_test_guest::DEFAULT_KERNEL)]
        kernel: String,
        /// QEMU CPU model (`max`: 5-level paging; `qemu64,vendor=GenuineIntel`: KPTI).
        #[arg(long, default_value = "qemu64")]
        cpu: String,
        /// Number of vCPUs.
        #[arg(long, default_value_t = 1)]
        smp: u32,
        /// RAM in MiB.
        #[arg(long, default_value_t = 256)]
        mem: u64,
        /// Boot with `nokaslr`.
        #[arg(long)]
        no_kaslr: bool,
        /// Dump the full /proc/kallsyms into DIR/kallsyms.txt.
        #[arg(long)]
        kallsyms: bool,
        /// Extra kernel command-line word (repeatable).
        #[arg(long)]
        append: Vec<String>,
        /// Accelerator: auto (KVM only with kvm_intel/kvm_amd), tcg or kvm.
        #[arg(long, default_value = "auto")]
        accel: String,
        /// Seconds to wait for the ready marker.
        #[arg(long, default_value_t = 240)]
        timeout: u64,
        /// Userland: `busybox` or `realistic`; default `$VMI_GUEST_USERLAND`, else busybox.
        #[arg(long)]
        userland: Option<String>,
        /// Give the host a command channel into the guest (`guest run`).
        #[arg(long)]
        control: bool,
    },
    /// Run a shell command in a guest booted with `up --control`; prints its output and
    /// exits with its status (e.g. `guest run --dir D -- vmi_execs 100`).
    Run {
        /// Guest directory.
        #[arg(long)]
        dir: PathBuf,
        /// Seconds to wait for the command to end.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// The command line.
        #[arg(required = true, trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// Dump guest memory through QMP (`dump-guest-memory`, paging=false).
    Dump {
        /// Guest directory.
        #[arg(long)]
        dir: PathBuf,
        /// `elf` or `kdump-zlib` (flattened format).
        #[arg(long, default_value = "elf")]
        format: String,
        /// Output file.
        out: PathBuf,
    },
    /// Send QMP commands (JSON) or HMP commands (`hmp:info registers`) on the aux socket.
    Qmp {
        /// Guest directory.
        #[arg(long)]
        dir: PathBuf,
        /// Commands, run in order.
        #[arg(required = true)]
        commands: Vec<String>,
    },
    /// Quit QEMU (QMP, then by PID) and delete the RAM file.
    Down {
        /// Guest directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Stop guests of test processes that died without cleaning up (killed by a signal).
    Reap,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Top::Guest(cmd) => guest(cmd),
        Top::Xen(XenCmd::Smoke {
            xen,
            events,
            timeout,
            profile,
            build_only,
            prebuilt,
            fetch_only,
        }) => {
            let build = match (build_only, prebuilt) {
                _ if fetch_only => xen::Build::FetchOnly,
                (_, true) => xen::Build::Prebuilt,
                (true, _) => xen::Build::Only(profile),
                _ => xen::Build::Then(profile),
            };
            if !xen::smoke(&xen, events, Duration::from_secs(timeout), build)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Top::Hostile(HostileCmd::Campaign {
            dump,
            vmi,
            out,
            mutations,
            variants,
            seed,
            timeout,
            max_rss_mib,
        }) => {
            let vmi = match vmi {
                Some(v) => v,
                None => {
                    let st = std::process::Command::new("cargo")
                        .args(["build", "--release", "-q", "-p", "vmi-cli"])
                        .status()?;
                    if !st.success() {
                        bail!("cargo build --release -p vmi-cli failed");
                    }
                    PathBuf::from("target/release/vmi")
                }
            };
            let ok = hostile::run(&hostile::Campaign {
                dump,
                vmi,
                out,
                mutations,
                variants,
                seed,
                timeout: Duration::from_secs(timeout),
                max_rss_kib: max_rss_mib * 1024,
            })?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Top::Xen(XenCmd::Headers { xen }) => {
            println!("{}", xen::headers(&xen)?.display());
            Ok(())
        }
    }
}

fn guest(cmd: GuestCmd) -> Result<()> {
    match cmd {
        GuestCmd::Build { kernel, userland } => {
            let spec: KernelSpec = kernel.parse()?;
            let userland = match userland {
                Some(u) => u.parse()?,
                None => vmi_test_guest::Userland::from_env()?,
            };
            let k = vmi_test_guest::kernel::prepare_for(&spec, userland)?;
            println!("KERNEL_PACKAGE={}", k.package);
            println!("KERNEL_VERSION={}", k.version);
            println!("KERNEL_RELEASE={}", k.release);
            println!("VMLINUZ={}", k.vmlinuz.display());
            println!("VMLINUZ_COMPRESSION={}", k.compression);
            println!("VMLINUX={}", k.vmlinux.display());
            println!("INITRD={}", k.initrd.display());
        }
        GuestCmd::Run {
            dir,
            timeout,
            command,
        } => {
            let out = vmi_test_guest::ctl::run_in(
                &dir,
                &command.join(" "),
                Duration::from_secs(timeout),
            )?;
            print!("{}", out.output);
            std::process::exit(out.rc);
        }
        GuestCmd::Up {
            dir,
            kernel,
            cpu,
            smp,
            mem,
            no_kaslr,
            kallsyms,
            append,
            accel,
            timeout,
            userland,
            control,
        } => {
            let accel = match accel.as_str() {
                "auto" => Accel::Auto,
                "tcg" => Accel::Tcg,
                "kvm" => Accel::Kvm,
                other => bail!("--accel must be auto|tcg|kvm, not `{other}`"),
            };
            let mut cfg = GuestConfig::default()
                .dir(&dir)
                .kernel(kernel.parse()?)
                .cpu(&cpu)
                .smp(smp)
                .mem_mb(mem)
                .kaslr(!no_kaslr)
                .kallsyms(kallsyms)
                .accel(accel)
                .boot_timeout(Duration::from_secs(timeout))
                .control(control);
            if let Some(u) = userland {
                cfg = cfg.userland(u.parse()?);
            }
            for w in &append {
                cfg = cfg.append(w);
            }
            let guest = TestGuest::boot(cfg).context("guest up")?;
            let env = guest.detach();
            eprintln!(
                "guest ready after {:.1} s ({} {}, {}); {}",
                env.boot_seconds,
                env.kernel_release,
                env.accel,
                env.cpu,
                env.dir.join("guest.env").display()
            );
            print!("{}", env.render());
        }
        GuestCmd::Dump { dir, format, out } => {
            let env = GuestEnv::load(&dir)?;
            let format: DumpFormat = format.parse()?;
            env.dump(format, &out)?;
            let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "dumped {size} bytes to {} ({})",
                out.display(),
                format.qmp_name()
            );
        }
        GuestCmd::Qmp { dir, commands } => {
            let env = GuestEnv::load(&dir)?;
            for c in commands {
                if let Some(h) = c.strip_prefix("hmp:") {
                    print!("{}", env.hmp(h)?);
                } else {
                    let v: serde_json::Value =
                        serde_json::from_str(&c).with_context(|| format!("bad JSON `{c}`"))?;
                    println!("{}", env.qmp(&v)?);
                }
            }
        }
        GuestCmd::Reap => {
            let base = vmi_test_guest::cache::guests_base_dir();
            vmi_test_guest::reap_orphans(&base);
            eprintln!("reaped orphaned guests under {}", base.display());
        }
        GuestCmd::Down { dir } => {
            let env = vmi_test_guest::stop_dir(&dir)?;
            eprintln!(
                "stopped QEMU pid {} and removed {}",
                env.qemu_pid,
                env.mem_file.display()
            );
        }
    }
    Ok(())
}
