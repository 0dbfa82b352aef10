//! DWARF loader against the C compiler: a snippet with known layouts is compiled twice
//! (`cc -g -c`, a relocatable object, and a linked program); the program prints
//! `offsetof`/`sizeof` and bitfield positions measured in memory, and the profiles loaded
//! from both files must agree with it. Plus a seeded fuzz test of the loader.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmi_profile::dwarf::{load_dwarf, parse_dwarf};
use vmi_profile::{Profile, Type};
use vmi_test_guest::bounded::{CASE_LIMIT, within};

/// Every test of this binary together stays under 1 GiB of live heap: a blow-up on hostile
/// input aborts the binary instead of exhausting the machine.
#[global_allocator]
static ALLOC: vmi_test_guest::bounded::MemoryCap = vmi_test_guest::bounded::memory_cap(1 << 30);

const SNIPPET: &str = r#"
#include <stddef.h>
#include <stdio.h>
#include <string.h>

typedef unsigned long long u64;
struct list_head { struct list_head *next, *prev; };
enum state { S_RUNNING = 0, S_SLEEPING = 1, S_NEGATIVE = -5, S_BIG = 0x7fffffff };
struct flags { unsigned int a : 3; unsigned int b : 7; unsigned int : 2; unsigned int c : 20; unsigned char d : 1; };
struct task {
    int pid;
    char comm[16];
    union { u64 state_word; struct { unsigned short lo; unsigned short hi; }; };
    struct list_head tasks;
    struct flags f;
    enum state st;
    int grid[2][3];
    const volatile struct task *parent;
    void (*callback)(int, const char *, ...);
    double load;
};
struct task init_task = { .pid = 1 };
typedef struct task task_t;
task_t *current_task = &init_task;

u64 jiffies_counter;
static int local_static;

static int lowest_bit(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n * 8; i++) if (p[i / 8] & (1u << (i % 8))) return (int)i;
    return -1;
}
static int count_bits(const unsigned char *p, size_t n) {
    int c = 0;
    for (size_t i = 0; i < n * 8; i++) if (p[i / 8] & (1u << (i % 8))) c++;
    return c;
}
#define OFF(T, F) printf("%s.%s %zu\n", #T, #F, offsetof(struct T, F))
#define SIZE(T) printf("%s %zu\n", #T, sizeof(struct T))
#define BITS(F) do { struct flags x; memset(&x, 0, sizeof x); x.F = ~0u; \
    printf("flags.%s.bit %d\nflags.%s.width %d\n", #F, lowest_bit((unsigned char *)&x, sizeof x), \
           #F, count_bits((unsigned char *)&x, sizeof x)); } while (0)

int main(void) {
    local_static++;
    SIZE(task); SIZE(list_head); SIZE(flags);
    OFF(task, pid); OFF(task, comm); OFF(task, state_word); OFF(task, lo); OFF(task, hi);
    OFF(task, tasks); OFF(task, f); OFF(task, st); OFF(task, grid); OFF(task, parent);
    OFF(task, callback); OFF(task, load); OFF(list_head, prev);
    BITS(a); BITS(b); BITS(c); BITS(d);
    printf("addr init_task %p\naddr jiffies_counter %p\naddr main %p\n",
           (void *)&init_task, (void *)&jiffies_counter, (void *)main);
    return 0;
}
"#;

fn cc_available() -> bool {
    Command::new("cc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn build(dir: &Path) -> (PathBuf, PathBuf) {
    let src = dir.join("snippet.c");
    std::fs::write(&src, SNIPPET).unwrap();
    let obj = dir.join("snippet.o");
    let exe = dir.join("snippet");
    for args in [
        vec![
            "-g",
            "-O0",
            "-c",
            "-o",
            obj.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
        // No PIE: the printed addresses are the link-time ones.
        vec![
            "-g",
            "-O0",
            "-no-pie",
            "-o",
            exe.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
    ] {
        let out = Command::new("cc").args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "cc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (obj, exe)
}

/// The compiler's truth, printed by the program.
fn truth(exe: &Path) -> HashMap<String, String> {
    let out = Command::new(exe).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn check_layouts(p: &Profile, t: &HashMap<String, String>, what: &str) {
    let num = |k: &str| -> u64 {
        t.get(k)
            .unwrap_or_else(|| panic!("truth has no {k}"))
            .parse()
            .unwrap()
    };
    for s in ["task", "list_head", "flags"] {
        assert_eq!(p.size_of(s).unwrap(), num(s), "{what}: sizeof {s}");
    }
    for f in [
        "pid",
        "comm",
        "state_word",
        "lo",
        "hi",
        "tasks",
        "f",
        "st",
        "grid",
        "parent",
        "callback",
        "load",
    ] {
        assert_eq!(
            p.offset_of("task", f).unwrap(),
            num(&format!("task.{f}")),
            "{what}: offsetof task.{f}"
        );
    }
    assert_eq!(
        p.offset_of("list_head", "prev").unwrap(),
        num("list_head.prev")
    );
    // typedef to the struct resolves too.
    assert_eq!(p.size_of("task_t").unwrap(), num("task"));
    for f in ["a", "b", "c", "d"] {
        let bit = num(&format!("flags.{f}.bit"));
        let width = num(&format!("flags.{f}.width")) as u32;
        let fi = p.field("flags", f).unwrap();
        assert_eq!(fi.bit_offset, bit, "{what}: flags.{f} bit offset");
        assert_eq!(fi.bit_size, Some(width), "{what}: flags.{f} width");
    }
    // Arrays, enums, pointers and function pointers keep their shape.
    let grid = p.field("task", "grid").unwrap();
    assert_eq!(grid.size, Some(24));
    match p.types.get(p.types.resolve(grid.ty).unwrap()).unwrap() {
        Type::Array { count, element, .. } => {
            assert_eq!(*count, 2);
            assert!(matches!(
                p.types.get(*element),
                Some(Type::Array { count: 3, .. })
            ));
        }
        other => panic!("grid is {other:?}"),
    }
    assert_eq!(p.enum_value("state", "S_NEGATIVE"), Some(-5));
    assert_eq!(p.enum_value("state", "S_BIG"), Some(0x7fff_ffff));
    let parent = p.field("task", "parent").unwrap();
    assert_eq!(parent.size, Some(8));
    let spelled = p.types.describe(parent.ty);
    assert!(
        spelled == "const volatile struct task *" || spelled == "volatile const struct task *",
        "{spelled}"
    );
    let cb = p.field("task", "callback").unwrap();
    assert!(matches!(p.types.get(cb.ty), Some(Type::Pointer { .. })));
}

#[test]
fn dwarf_layouts_equal_the_compilers() {
    if !cc_available() {
        eprintln!("SKIPPED dwarf_layouts_equal_the_compilers: no C compiler (cc)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmi-profile-dwarf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (obj, exe) = build(&dir);
    let t = truth(&exe);

    let from_obj = load_dwarf(&obj).unwrap();
    check_layouts(&from_obj, &t, "object");
    let from_exe = load_dwarf(&exe).unwrap();
    check_layouts(&from_exe, &t, "program");

    // Symbols from .symtab, at the addresses the program printed.
    for s in ["init_task", "jiffies_counter", "main"] {
        let printed = t.get(&format!("addr {s}")).unwrap();
        let addr = u64::from_str_radix(printed.trim_start_matches("0x"), 16).unwrap();
        assert_eq!(from_exe.symbol_address(s).unwrap(), addr, "{s}");
    }
    assert_eq!(from_exe.symbol("main").unwrap().kind, Some('T'));
    assert_eq!(from_exe.symbol("init_task").unwrap().kind, Some('D'));
    assert_eq!(from_exe.symbol("jiffies_counter").unwrap().kind, Some('B'));
    assert_eq!(from_exe.symbol("local_static").unwrap().kind, Some('b'));

    // Without .symtab, symbols come from DW_TAG_variable/subprogram.
    let stripped = dir.join("snippet.stripped");
    let ok = Command::new("objcopy")
        .args(["--strip-all", "--keep-section=.debug_*"])
        .arg(&exe)
        .arg(&stripped)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let p = load_dwarf(&stripped).unwrap();
        for s in ["init_task", "jiffies_counter", "main", "local_static"] {
            assert_eq!(
                p.symbol_address(s).unwrap(),
                from_exe.symbol_address(s).unwrap(),
                "{s} from DWARF"
            );
        }
        assert_eq!(p.symbol("main").unwrap().kind, Some('T'));
        assert_eq!(p.symbol("local_static").unwrap().kind, Some('d'));
    } else {
        eprintln!("note: objcopy unavailable, DWARF-only symbols not checked");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dwarf_errors_name_the_file() {
    let e = parse_dwarf(b"\x7fELF garbage", "bad.elf")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("bad.elf: bad dwarf"), "{e}");
    let e = load_dwarf(Path::new("/nonexistent/vmlinux"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/vmlinux"), "{e}");
}

/// Seeded, bounded mutations of a compiled object's DWARF: no panic, no hang.
#[test]
fn fuzz_dwarf() {
    if !cc_available() {
        eprintln!("SKIPPED fuzz_dwarf: no C compiler (cc)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmi-profile-dwarf-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (obj, _) = build(&dir);
    let seed = std::fs::read(&obj).unwrap();
    let mut rng = SmallRng::seed_from_u64(0xd3a4f);
    let mut parsed = 0;
    for _ in 0..400 {
        let mut v = seed.clone();
        for _ in 0..rng.gen_range(1..8) {
            let i = rng.gen_range(0..v.len());
            match rng.gen_range(0..4) {
                0 | 1 => v[i] = rng.r#gen(),
                2 => v[i] = [0, 0xff, 0x80, 0x7f][rng.gen_range(0..4)],
                _ => {
                    if rng.gen_range(0..10) == 0 {
                        v.truncate(i)
                    }
                }
            }
        }
        parsed += usize::from(within("dwarf mutant", CASE_LIMIT, move || {
            let Ok(p) = parse_dwarf(&v, "fuzz.o") else {
                return false;
            };
            for (id, _) in p.types.iter() {
                let _ = p.types.size_of(id);
                let _ = p.types.describe(id);
            }
            let _ = p.offset_of("task", "tasks");
            true
        }));
    }
    eprintln!("fuzz_dwarf: {parsed} of 400 mutants parsed");
    let _ = std::fs::remove_dir_all(&dir);
}
