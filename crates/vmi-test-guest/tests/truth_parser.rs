//! The truth parser against a real serial log (golden JSON), plus a seeded, bounded fuzz
//! test (mutations of that log: no panic, no hang).

use std::path::PathBuf;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use vmi_test_guest::{ENV_MARKER, GuestEnv, Truth, truth};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn real_log() -> String {
    std::fs::read_to_string(fixture("serial-bookworm-default.log")).expect("fixture")
}

#[test]
fn real_serial_log_matches_golden_json() {
    let t = Truth::from_serial_log(&real_log()).expect("parses");
    let json = serde_json::to_string_pretty(&t).expect("json") + "\n";
    let golden = fixture("serial-bookworm-default.truth.json");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&golden, &json).expect("write golden");
    }
    let expected =
        std::fs::read_to_string(&golden).expect("golden file (UPDATE_EXPECT=1 creates it)");
    assert_eq!(
        json, expected,
        "truth JSON changed; rerun with UPDATE_EXPECT=1 if intended"
    );
    // and the JSON reads back into the same value
    let back: Truth = serde_json::from_str(&expected).expect("golden parses");
    assert_eq!(back, t);
}

fn realistic_log() -> String {
    std::fs::read_to_string(fixture("serial-realistic-excerpt.log")).expect("fixture")
}

#[test]
fn realistic_serial_log_excerpt() {
    let t = Truth::from_serial_log(&realistic_log()).expect("parses");
    assert!(t.unknown_lines.is_empty(), "{:?}", t.unknown_lines);
    assert!(t.every_process_detailed() && t.warnings.is_empty());
    let server = t.task("vmi_server").expect("server");
    assert_eq!(server.threads.len(), 10);
    assert!(t.blocked_by_design(server.pid));
    assert_eq!(server.start_ticks.map(|s| s > 0), Some(true));
    let app = t.task("vmi_ctr_app").expect("container app");
    assert_eq!(app.ns_pid.len(), 2);
    assert_eq!(t.hostname_of(app.pid), Some("vmictr"));
    let details = t.process_by_pid(app.pid).expect("details");
    assert_eq!(details.root.as_deref(), Some("/srv"));
    assert_eq!(details.exe.as_deref(), Some("/usr/bin/python3.11"));
    assert!(details.fds.iter().any(|f| f.target == "/data/ctr-data"));
    let zombie = t.task("vmi_zombie").expect("zombie");
    assert_eq!(zombie.state, "Z");
    let z = t.process_by_pid(zombie.pid).expect("zombie details");
    assert!(z.maps.is_empty() && z.exe.is_none() && z.argv.is_empty());
    let files = t.process("vmi_files").expect("files");
    assert!(
        files
            .maps
            .iter()
            .any(|m| m.path.as_deref() == Some("/memfd:vmi-memfd (deleted)"))
    );
    // JSON round trip
    let back: Truth = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
    assert_eq!(back, t);
}

#[test]
fn real_serial_log_contents() {
    let t = Truth::from_serial_log(&real_log()).expect("parses");
    assert_eq!(t.release, "6.1.0-56-cloud-amd64");
    assert_eq!(t.hostname, "vmiguest");
    assert!(t.unknown_lines.is_empty(), "{:?}", t.unknown_lines);
    let s = t.process("vmi_sleeper").expect("sleeper");
    assert!(s.environ.iter().any(|e| e == ENV_MARKER));
    assert_eq!(
        s.maps.first().and_then(|m| m.path.as_deref()),
        Some("/bin/vmi_sleeper")
    );
    let stack = s
        .maps
        .iter()
        .find(|m| m.path.as_deref() == Some("[stack]"))
        .expect("stack");
    assert!(
        stack.start < s.arg_start && s.env_end <= stack.end,
        "argv/env live on the stack"
    );
    assert_eq!(
        t.processes.iter().filter(|p| p.comm == "vmi_child").count(),
        2
    );
    assert_eq!(t.modules.len(), 3);
    assert!(t.ksym("init_task").is_some());
    assert!(t.iomem.iter().any(|r| r.name == "Kernel code"));
    assert!(t.vmcoreinfo_note.is_some());
    assert_eq!(t.dmesg_tail.len(), 20);
}

#[test]
fn missing_or_empty_block_is_an_error() {
    assert!(Truth::from_serial_log("").is_err());
    assert!(
        Truth::from_serial_log("VMI_TRUTH_BEGIN\r\nrelease x\r\n").is_err(),
        "no end marker"
    );
    assert!(
        Truth::from_serial_log("VMI_TRUTH_BEGIN\nVMI_TRUTH_END\n").is_err(),
        "no release"
    );
    let bad = "VMI_TRUTH_BEGIN\nrelease x\ntask 1 0 one 0 S init\nVMI_TRUTH_END\n";
    let e = Truth::from_serial_log(bad).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("tgid"), "{e}");
    let orphan = "VMI_TRUTH_BEGIN\nrelease x\nmaps 5 0-1 r--p 0 0:0 0\nVMI_TRUTH_END\n";
    assert!(Truth::from_serial_log(orphan).is_err(), "maps before proc");
}

fn mutate(rng: &mut SmallRng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.gen_range(1..8) {
        if v.is_empty() {
            v.push(b'\n');
        }
        let i = rng.gen_range(0..v.len());
        match rng.gen_range(0..7) {
            0 => v[i] = rng.r#gen(),
            1 => v[i] ^= 1 << rng.gen_range(0..8),
            2 => {
                let end = (i + rng.gen_range(1..200)).min(v.len());
                v.drain(i..end);
            }
            3 => {
                let end = (i + rng.gen_range(1..200)).min(v.len());
                let chunk = v[i..end].to_vec();
                let j = rng.gen_range(0..v.len());
                v.splice(j..j, chunk);
            }
            4 => v.truncate(i),
            5 => {
                let tok: &[u8] = [
                    &b" "[..],
                    b"\r\n",
                    b"0x",
                    b"-",
                    b" : ",
                    b"\xff",
                    b"proc 1 ",
                    b"maps 1 ",
                ][rng.gen_range(0..8)];
                v.splice(i..i, tok.iter().copied());
            }
            _ => {
                let digits: Vec<u8> = (0..rng.gen_range(1..30))
                    .map(|_| b'0' + rng.gen_range(0..10))
                    .collect();
                v.splice(i..i, digits);
            }
        }
    }
    v
}

/// Seeded, bounded: 3000 mutations of the real log's truth block; the parser must return
/// (Ok or Err) without panicking.
#[test]
fn fuzz_truth_parser() {
    let blocks: Vec<String> = [real_log(), realistic_log()]
        .iter()
        .map(|log| truth::section(log, truth::TRUTH_BEGIN, truth::TRUTH_END).expect("block"))
        .collect();
    let mut rng = SmallRng::seed_from_u64(0x5eed_7207);
    let (mut ok, mut err) = (0, 0);
    for i in 0..3000 {
        let block = &blocks[i % blocks.len()];
        let m = mutate(&mut rng, block.as_bytes());
        let text = String::from_utf8_lossy(&m);
        match Truth::parse_block(&text) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
        // the whole-log entry point and the line parsers too
        let _ = Truth::from_serial_log(&format!("x\r\nVMI_TRUTH_BEGIN\r\n{text}VMI_TRUTH_END\r\n"));
        for line in text.lines().take(50) {
            let _ = truth::parse_maps_line(line);
            let _ = truth::parse_module_line(line);
            let _ = truth::parse_iomem_line(line);
        }
    }
    assert!(
        ok > 0 && err > 0,
        "mutations should produce both outcomes ({ok} ok, {err} err)"
    );
}

/// Seeded, bounded fuzzing of `guest.env` parsing.
#[test]
fn fuzz_guest_env_parser() {
    let sample = "GUEST_DIR=/g\nQEMU_PID=10\nOWNER_PID=0\nQMP_SOCKET=/g/q\nQMP_AUX_SOCKET=/g/a\n\
                  GDB_SOCKET=/g/gdb\nMEM_FILE=/dev/shm/x.ram\nMEM_SIZE=268435456\nSERIAL_LOG=/g/s\n\
                  TRUTH_JSON=/g/t.json\nKERNEL_RELEASE=6.1\nVMLINUX=/v\nVMLINUZ=/z\nSMP=2\nKASLR=0\n";
    let env = GuestEnv::parse("guest.env".as_ref(), sample).expect("sample parses");
    assert_eq!((env.smp, env.kaslr, env.mem_size), (2, false, 256 << 20));
    let again = GuestEnv::parse("guest.env".as_ref(), &env.render()).expect("render round-trips");
    assert_eq!(again, env);
    let mut rng = SmallRng::seed_from_u64(7);
    for _ in 0..2000 {
        let m = mutate(&mut rng, sample.as_bytes());
        let _ = GuestEnv::parse("guest.env".as_ref(), &String::from_utf8_lossy(&m));
    }
}
