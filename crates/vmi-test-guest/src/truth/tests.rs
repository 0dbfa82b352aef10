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
