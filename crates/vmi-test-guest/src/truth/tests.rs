use super::*;

const SAMPLE: &str = "VMI_TRUTH_BEGIN\r\nrelease 6.1.0-56-cloud-amd64\r\nuptime 3.21 2.90\r\n\
task 1 0 1 0 S init\r\ntask 70 1 70 0 S vmi_sleeper\r\n\
proc 70 140736 140749 140749 140800 vmi_sleeper\r\nargv 70 sleep\r\nargv 70 100000\r\n\
environ 70 VMI_ENV_MARKER=VMI-ENV-MARKER-5a17c0de\r\n\
maps 70 00400000-00401000 r--p 00000000 00:02 12 /bin/vmi_sleeper\r\n\
maps 70 7ffc1000-7ffc2000 rw-p 00000000 00:00 0 [stack]\r\n\
maps 70 7ffc3000-7ffc4000 rw-p 00000000 00:00 0\r\n\
fd 70 3 /etc/vmi-fd-target\r\n\
module qemu_fw_cfg 20480 0 - Live 0xffffffffc0123000\r\n\
ksym ffffffff9d800000 T _text\r\n\
iomem 00001000-0009fbff : System RAM\r\niomem   0c600000-0d401fff : Kernel code\r\n\
vmcoreinfo_note 1a3c2000 1024\r\nVMI_TRUTH_END\r\nVMI_GUEST_READY\r\n";

#[test]
fn parses_sample() {
    let t = Truth::from_serial_log(SAMPLE).unwrap();
    assert_eq!(t.release, "6.1.0-56-cloud-amd64");
    assert_eq!(t.tasks.len(), 2);
    let p = t.process("vmi_sleeper").unwrap();
    assert_eq!((p.arg_start, p.env_end), (140736, 140800));
    assert_eq!(p.argv, ["sleep", "100000"]);
    assert_eq!(p.maps.len(), 3);
    assert_eq!(p.maps[0].path.as_deref(), Some("/bin/vmi_sleeper"));
    assert_eq!(p.maps[2].path, None);
    assert_eq!(
        p.fds[0],
        Fd {
            fd: 3,
            target: "/etc/vmi-fd-target".into()
        }
    );
    assert_eq!(t.modules[0].address, 0xffffffffc0123000);
    assert_eq!(t.ksym("_text"), Some(0xffffffff9d800000));
    assert_eq!(t.iomem[1].depth, 1);
    assert_eq!(t.system_ram(), vec![(0x1000, 0x9fbff)]);
    assert_eq!(
        t.vmcoreinfo_note,
        Some(VmcoreinfoNote {
            paddr: 0x1a3c2000,
            size: 0x1024
        })
    );
    assert!(t.unknown_lines.is_empty());
}

/// The lines only the realistic userland prints (taken from a real boot, shortened).
const REALISTIC: &str = "release 6.1.0-57-cloud-amd64\n\
userland realistic\nprinter 113\n\
task 104 1 104 0 S vmi_server\nids 104 0 104 104 0 0 312\n\
thread 104 104 S vmi_server\nthread 104 125 S worker-0\n\
ns 104 pid 4026531836\nns 104 mnt 4026531841\nns 104 uts 4026531838\nblocked 104\n\
task 117 114 117 0 S vmi_ctr_app\nids 117 0 117,4 117,4 0 0 420\n\
ns 117 uts 4026532115\nblocked 117\n\
proc 117 1 2 3 4 vmi_ctr_app\nroot 117 /srv\nexe 117 /usr/bin/python3.11\n\
maps 117 7f63b62f7000-7f63b62f8000 r--p 00000000 00:15 4                          /tmp/x.dat (deleted)\n\
fd 117 3 /srv/ctr-data\nfd 117 5 socket:[10256]\n\
uts 4026531838 vmiguest\nuts 4026532115 vmictr\n\
warning not settled\nprinted started at uptime 10.29 s\n";

#[test]
fn parses_realistic_lines() {
    let t = Truth::parse_block(REALISTIC).unwrap();
    assert!(t.unknown_lines.is_empty(), "{:?}", t.unknown_lines);
    assert!(t.every_process_detailed());
    assert_eq!(t.printer_pid, Some(113));
    assert_eq!(t.blocked, [104, 117]);
    assert!(t.blocked_by_design(117) && !t.blocked_by_design(113));
    let server = t.task_by_pid(104).unwrap();
    assert_eq!(server.gid, Some(0));
    assert_eq!(
        (server.euid, server.egid, server.start_ticks),
        (Some(0), Some(0), Some(312))
    );
    assert_eq!(
        (server.ns_pid.as_slice(), server.ns_tgid.as_slice()),
        (&[104][..], &[104][..])
    );
    assert_eq!(
        server.threads[1],
        Thread {
            tid: 125,
            state: "S".into(),
            comm: "worker-0".into()
        }
    );
    assert_eq!(server.namespaces["uts"], 4026531838);
    assert_eq!(t.task_by_pid(117).unwrap().ns_pid, [117, 4]);
    assert_eq!(t.hostname_of(104), Some("vmiguest"));
    assert_eq!(t.hostname_of(117), Some("vmictr"));
    let app = t.process_by_pid(117).unwrap();
    assert_eq!(app.maps[0].path.as_deref(), Some("/tmp/x.dat (deleted)"));
    assert_eq!(app.fds[1].target, "socket:[10256]");
    assert_eq!(app.root.as_deref(), Some("/srv"));
    assert_eq!(app.exe.as_deref(), Some("/usr/bin/python3.11"));
    assert_eq!(t.warnings, ["not settled"]);
    assert_eq!(t.printed.as_deref(), Some("started at uptime 10.29 s"));
    // JSON round trip keeps the new fields; the busybox sample serializes without them.
    let back: Truth = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
    assert_eq!(back, t);
    let old = serde_json::to_string(&Truth::from_serial_log(SAMPLE).unwrap()).unwrap();
    assert!(!old.contains("ns_pid") && !old.contains("blocked"));
}

#[test]
fn realistic_lines_need_their_task_line() {
    for bad in [
        "release r\nids 5 0 5 5\n",
        "release r\nthread 5 5 S x\n",
        "release r\nns 5 uts 1\n",
        "release r\ntask 5 1 5 0 S x\nids 5 0 5,x 5 0 0 1\n",
        "release r\ntask 5 1 5 0 S x\nids 5 0 5 5\n",
        "release r\nexe 5 /bin/x\n",
        "release r\nblocked x\n",
    ] {
        assert!(Truth::parse_block(bad).is_err(), "{bad}");
    }
}
