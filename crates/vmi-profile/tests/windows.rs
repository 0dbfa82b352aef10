//! Windows: PDB loading (real MSVC PDB, generated kernel PDB checked against the ISF it was
//! laid out from), PE CodeView records (file and memory layouts), the symbol-server client
//! against a local HTTP server, and seeded fuzzing of the PDB and PE parsers.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmi_profile::isf::load_isf;
use vmi_profile::pdb::{load_pdb, parse_pdb};
use vmi_profile::pe::{ImageLayout, codeview_from_file, codeview_from_image};
use vmi_profile::symsrv::{Store, SymbolPath, SymbolPathEntry, SymbolServer, store_path};
use vmi_profile::{OsKind, PdbId, ProfileError};
use vmi_test_guest::bounded::{CASE_LIMIT, within};

/// Every test of this binary together stays under 1 GiB of live heap: a blow-up on hostile
/// input aborts the binary instead of exhausting the machine.
#[global_allocator]
static ALLOC: vmi_test_guest::bounded::MemoryCap = vmi_test_guest::bounded::memory_cap(1 << 30);

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

const BREAKPAD_EXE: &str = "pe-pdb/dump_syms_regtest64.exe";
const BREAKPAD_PDB: &str = "pe-pdb/dump_syms_regtest64.pdb";
const BREAKPAD_ID: &str = "72E103A85CB249078B76B2E7C06257B13";

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmi-profile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn breakpad_pdb_identity_symbols_and_types() {
    let p = load_pdb(&fixture(BREAKPAD_PDB)).unwrap();
    assert_eq!(p.metadata.os, OsKind::Windows);
    assert_eq!(p.metadata.pdb.unwrap().to_string(), BREAKPAD_ID);
    // The shared data's manifest counts 1,058 public symbols; global data symbols add more.
    assert!(p.symbols.len() >= 1058, "{} symbols", p.symbols.len());
    let main = p.symbol("main").unwrap();
    assert_eq!(main.kind, Some('T'));
    assert_eq!(main.address, 0x1010);
    // No symbol appears twice under one name at one address.
    let mut seen = std::collections::HashSet::new();
    for s in p.symbols.iter() {
        assert!(seen.insert((s.name.clone(), s.address)), "duplicate {s:?}");
    }
    // Well-known Windows SDK layouts.
    assert_eq!(p.size_of("_LIST_ENTRY").unwrap(), 16);
    assert_eq!(p.offset_of("_LIST_ENTRY", "Blink").unwrap(), 8);
    assert_eq!(p.size_of("_UNICODE_STRING").unwrap(), 16);
    assert_eq!(p.offset_of("_UNICODE_STRING", "Buffer").unwrap(), 8);
    assert_eq!(p.size_of("_M128A").unwrap(), 16);
    assert_eq!(p.offset_of("_XSAVE_FORMAT", "XmmRegisters").unwrap(), 160);
    // Bitfields (Windows SDK: UNWIND_INFO { Version:3; Flags:5; SizeOfProlog; CountOfCodes;
    // FrameRegister:4; FrameOffset:4 }).
    for (f, bit, width) in [
        ("Version", 0, 3),
        ("Flags", 3, 5),
        ("FrameRegister", 24, 4),
        ("FrameOffset", 28, 4),
    ] {
        let fi = p.field("_UNWIND_INFO", f).unwrap();
        assert_eq!(
            (fi.bit_offset, fi.bit_size),
            (bit, Some(width)),
            "_UNWIND_INFO.{f}"
        );
    }
    assert_eq!(p.offset_of("_UNWIND_INFO", "CountOfCodes").unwrap(), 2);
    // MSVC's `<unnamed-tag>` types are anonymous: no type is named like that.
    assert!(p.types.find("<unnamed-tag>").is_none());
    // A C++ class with a vtable: its data member follows the vtable pointer.
    let c = p.types.find_composite("google_breakpad::C").unwrap();
    assert!(p.types.size_of(c).unwrap() >= 16);
    // Enums carry their constants.
    assert!(p.types.find_enum("_EXCEPTION_DISPOSITION").is_some());
    assert_eq!(
        p.enum_value("_EXCEPTION_DISPOSITION", "ExceptionContinueSearch"),
        Some(1)
    );
}

/// The generated kernel PDB was laid out from the 19041.1526 ISF: every member it has sits
/// at the ISF's offset, with the ISF's struct sizes.
#[test]
fn generated_kernel_pdb_offsets_equal_the_isf() {
    let pdb = load_pdb(&fixture("generated-demo/ntkrnlmp.pdb")).unwrap();
    let isf = load_isf(&fixture("isf/9C00B19DBDE003DBFE4AB4216993C843-1.json.xz")).unwrap();
    let mut compared = 0;
    for name in [
        "_EPROCESS",
        "_KPROCESS",
        "_LIST_ENTRY",
        "_UNICODE_STRING",
        "_RTL_AVL_TREE",
        "_KLDR_DATA_TABLE_ENTRY",
    ] {
        assert_eq!(
            pdb.size_of(name).unwrap(),
            isf.size_of(name).unwrap(),
            "{name}"
        );
        let id = pdb.types.find_composite(name).unwrap();
        let c = pdb.types.composite(id).unwrap();
        for m in pdb.types.members(c) {
            let field = pdb.types.str(m.name);
            if field.is_empty() || field.starts_with("_pad") || field.starts_with("__pad") {
                continue;
            }
            let ours = pdb.field(name, field).unwrap();
            let theirs = isf
                .field(name, field)
                .unwrap_or_else(|e| panic!("{name}.{field} not in the isf: {e}"));
            assert_eq!(ours.offset, theirs.offset, "{name}.{field}");
            assert_eq!(ours.bit_size, theirs.bit_size, "{name}.{field}");
            compared += 1;
        }
    }
    assert!(compared >= 20, "only {compared} fields compared");
    for f in [
        "UniqueProcessId",
        "ActiveProcessLinks",
        "ImageFileName",
        "Peb",
    ] {
        assert_eq!(
            pdb.offset_of("_EPROCESS", f).unwrap(),
            isf.offset_of("_EPROCESS", f).unwrap()
        );
    }
    assert_eq!(
        pdb.offset_of("_EPROCESS", "Pcb.DirectoryTableBase").ok(),
        isf.offset_of("_EPROCESS", "Pcb.DirectoryTableBase").ok()
    );
    assert!(pdb.symbol("PsActiveProcessHead").is_some());
    assert!(pdb.symbol("PsLoadedModuleList").is_some());
}

#[test]
fn pe_codeview_matches_the_pdb_in_file_and_memory_layouts() {
    for (exe, pdb, name) in [
        (BREAKPAD_EXE, BREAKPAD_PDB, "dump_syms_regtest64.pdb"),
        (
            "generated-demo/ntoskrnl.exe",
            "generated-demo/ntkrnlmp.pdb",
            "ntkrnlmp.pdb",
        ),
    ] {
        let cv = codeview_from_file(&fixture(exe)).unwrap();
        assert_eq!(cv.pdb_name(), name);
        let p = load_pdb(&fixture(pdb)).unwrap();
        assert_eq!(Some(cv.id), p.metadata.pdb, "{exe}");

        let mapped = map_image(&std::fs::read(fixture(exe)).unwrap());
        let in_memory = codeview_from_image(&mapped, ImageLayout::Memory, "mapped").unwrap();
        assert_eq!(in_memory, cv);
    }
    let cv = codeview_from_file(&fixture(BREAKPAD_EXE)).unwrap();
    assert_eq!(cv.id.to_string(), BREAKPAD_ID);
}

/// Lays a PE file out as the loader would: headers, then each section at its RVA.
fn map_image(file: &[u8]) -> Vec<u8> {
    use object::read::pe::{ImageNtHeaders, PeFile64};
    let pe = PeFile64::parse(file).unwrap();
    let nt = pe.nt_headers();
    let size = nt.optional_header().size_of_image.get(object::LittleEndian) as usize;
    let headers = nt
        .optional_header()
        .size_of_headers
        .get(object::LittleEndian) as usize;
    let mut image = vec![0u8; size];
    image[..headers].copy_from_slice(&file[..headers]);
    for s in pe.section_table().iter() {
        let va = s.virtual_address.get(object::LittleEndian) as usize;
        let raw = s.pointer_to_raw_data.get(object::LittleEndian) as usize;
        let len = (s.size_of_raw_data.get(object::LittleEndian) as usize)
            .min(image.len() - va)
            .min(file.len() - raw);
        image[va..va + len].copy_from_slice(&file[raw..raw + len]);
    }
    image
}

#[test]
fn symbol_path_syntax() {
    let p = SymbolPath::parse(
        r"SRV*c:\cache*https://msdl.microsoft.com/download/symbols/; cache*/tmp/c ;/opt/pdbs;srv*https://example.test/s;srv*/a*/b*/store",
    )
    .unwrap();
    assert_eq!(
        p.entries,
        vec![
            SymbolPathEntry::Server {
                caches: vec![Some(PathBuf::from(r"c:\cache"))],
                store: Store::Http("https://msdl.microsoft.com/download/symbols".into()),
            },
            SymbolPathEntry::Cache(Some(PathBuf::from("/tmp/c"))),
            SymbolPathEntry::Dir(PathBuf::from("/opt/pdbs")),
            SymbolPathEntry::Server {
                caches: vec![None],
                store: Store::Http("https://example.test/s".into()),
            },
            SymbolPathEntry::Server {
                caches: vec![Some("/a".into()), Some("/b".into())],
                store: Store::Dir("/store".into()),
            },
        ]
    );
    assert_eq!(
        SymbolPath::parse("srv**http://h/x").unwrap().entries,
        vec![SymbolPathEntry::Server {
            caches: vec![None],
            store: Store::Http("http://h/x".into()),
        }]
    );
    for bad in ["", " ; ", "srv*", "srv*/cache*", "foo*bar", "cache*/a*/b"] {
        let e = SymbolPath::parse(bad).unwrap_err();
        assert!(matches!(e, ProfileError::SymbolPath { .. }), "{bad:?}: {e}");
    }
    let id = PdbId {
        guid: [0xab; 16],
        age: 0x1a,
    };
    assert_eq!(
        store_path("ntkrnlmp.pdb", &id),
        format!("ntkrnlmp.pdb/{}1A/ntkrnlmp.pdb", "AB".repeat(16))
    );
}

#[test]
fn fuzz_symbol_path() {
    const PIECES: &[&str] = &[
        "srv",
        "SRV",
        "symsrv",
        "cache",
        "*",
        "*",
        ";",
        ";",
        "/tmp/c",
        r"c:\cache",
        "http://h/x",
        "https://",
        "",
        " ",
        "**",
        "symsrv.dll",
    ];
    let mut rng = SmallRng::seed_from_u64(0x5359_4d50);
    for _ in 0..5000 {
        let text: String = (0..rng.gen_range(0..10))
            .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
            .collect();
        if let Ok(p) = SymbolPath::parse(&text) {
            assert!(!p.entries.is_empty(), "{text:?}");
        }
    }
}

/// Without the `symsrv` feature no request is made: the error says why for each URL,
/// and caches still answer.
#[cfg(not(feature = "symsrv"))]
#[test]
fn symbol_server_without_the_symsrv_feature_makes_no_request() {
    let cv = codeview_from_file(&fixture(BREAKPAD_EXE)).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cache = tmp_dir("symcache-nofeature");
    let path = SymbolPath::parse(&format!("srv*{}*{url}", cache.display())).unwrap();
    assert!(!SymbolServer::can_download());
    let e = SymbolServer::new(path.clone())
        .find_pdb(cv.pdb_name(), &cv.id)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("not requested (built without the symsrv feature)"),
        "{e}"
    );
    assert!(listener.accept().is_err(), "no connection was made");
    // A cached copy is found as with the feature.
    let stored = cache.join(store_path(cv.pdb_name(), &cv.id));
    std::fs::create_dir_all(stored.parent().unwrap()).unwrap();
    std::fs::copy(fixture(BREAKPAD_PDB), &stored).unwrap();
    assert_eq!(
        SymbolServer::new(path)
            .find_pdb(cv.pdb_name(), &cv.id)
            .unwrap(),
        stored
    );
    let _ = std::fs::remove_dir_all(&cache);
}

/// Downloads through a local HTTP server (feature `symsrv`).
#[cfg(feature = "symsrv")]
mod download {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    use vmi_profile::Profile;

    use super::*;

    /// A minimal HTTP/1.1 file server on 127.0.0.1 that logs the paths asked for.
    struct Server {
        url: String,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Server {
        fn start(files: HashMap<String, Vec<u8>>) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let log = Arc::new(Mutex::new(Vec::new()));
            let log2 = log.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        continue;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    // Skip the request headers.
                    let mut h = String::new();
                    while reader.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
                        h.clear();
                    }
                    log2.lock().unwrap().push(path.clone());
                    let resp = match files.get(&path) {
                    Some(body) => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        [head.into_bytes(), body.clone()].concat()
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                    let _ = stream.write_all(&resp);
                }
            });
            Server { url, log }
        }

        fn requests(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    #[test]
    fn symbol_server_downloads_then_serves_from_the_cache_offline() {
        let pdb_bytes = std::fs::read(fixture(BREAKPAD_PDB)).unwrap();
        let cv = codeview_from_file(&fixture(BREAKPAD_EXE)).unwrap();
        let rel = format!("/{}", store_path(cv.pdb_name(), &cv.id));
        assert_eq!(
            rel,
            format!("/dump_syms_regtest64.pdb/{BREAKPAD_ID}/dump_syms_regtest64.pdb")
        );
        // The first server has nothing; the second serves the file.
        let empty = Server::start(HashMap::new());
        let full = Server::start(HashMap::from([(rel.clone(), pdb_bytes.clone())]));
        let cache = tmp_dir("symcache");
        let path = SymbolPath::parse(&format!(
            "srv*{}*{};srv*{}*{}",
            cache.display(),
            empty.url,
            cache.display(),
            full.url
        ))
        .unwrap();
        let server = SymbolServer::new(path.clone());
        let p: Profile = server.profile_for_file(&fixture(BREAKPAD_EXE)).unwrap();
        assert_eq!(p.metadata.pdb, Some(cv.id));
        assert_eq!(empty.requests(), vec![rel.clone()]);
        assert_eq!(full.requests(), vec![rel.clone()]);
        let stored = cache.join(&rel[1..]);
        assert_eq!(std::fs::read(&stored).unwrap(), pdb_bytes);

        // Second time: from the cache, no request at all, also when offline.
        let again = SymbolServer::new(path.clone()).profile_for(&cv).unwrap();
        assert_eq!(again.symbols, p.symbols);
        let offline = SymbolServer::new(path).offline(true);
        assert_eq!(offline.find_pdb(cv.pdb_name(), &cv.id).unwrap(), stored);
        assert_eq!(full.requests().len(), 1);
        assert_eq!(empty.requests().len(), 1);

        // An in-memory image resolves the same way.
        let mapped = map_image(&std::fs::read(fixture(BREAKPAD_EXE)).unwrap());
        let from_image = offline.profile_for_image(&mapped, "guest module").unwrap();
        assert_eq!(from_image.metadata.pdb, Some(cv.id));

        // Not found anywhere: the error lists every place tried.
        let other = PdbId {
            guid: cv.id.guid,
            age: cv.id.age + 1,
        };
        let e = SymbolServer::new(
            SymbolPath::parse(&format!("srv*{}*{}", cache.display(), full.url)).unwrap(),
        )
        .find_pdb(cv.pdb_name(), &other)
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ProfileError::PdbNotFound { .. }), "{msg}");
        assert!(
            msg.contains(&format!("{}/dump_syms_regtest64.pdb/", full.url)),
            "{msg}"
        );
        assert!(msg.contains("http status 404"), "{msg}");
        assert!(msg.contains(&cache.display().to_string()), "{msg}");

        // A server that serves the wrong file is not believed, and nothing is stored.
        let liar_rel = format!("/{}", store_path(cv.pdb_name(), &other));
        let liar = Server::start(HashMap::from([(liar_rel.clone(), pdb_bytes.clone())]));
        let e = SymbolServer::new(
            SymbolPath::parse(&format!("srv*{}*{}", cache.display(), liar.url)).unwrap(),
        )
        .find_pdb(cv.pdb_name(), &other)
        .unwrap_err();
        assert!(e.to_string().contains("served a pdb for"), "{e}");
        assert!(!cache.join(&liar_rel[1..]).exists());

        // With a profile cache, the second request parses no PDB: it works even when the
        // downloaded file is gone.
        let profiles = tmp_dir("symcache-profiles");
        let with_profiles = SymbolServer::new(
            SymbolPath::parse(&format!("srv*{}*{}", cache.display(), full.url)).unwrap(),
        )
        .offline(true)
        .with_profile_cache(vmi_profile::cache::ProfileCache::new(&profiles));
        let first = with_profiles.profile_for(&cv).unwrap();
        std::fs::remove_file(&stored).unwrap();
        let second = with_profiles.profile_for(&cv).unwrap();
        assert_eq!(first, second);
        assert!(with_profiles.find_pdb(cv.pdb_name(), &cv.id).is_err());
        let _ = std::fs::remove_dir_all(&profiles);

        // Hostile names never become paths outside the cache.
        assert!(offline.find_pdb("../../etc/passwd", &cv.id).is_err());
        let _ = std::fs::remove_dir_all(&cache);
    }
}

#[test]
fn plain_directory_and_cache_entries() {
    let dir = tmp_dir("symdir");
    let cache = tmp_dir("symdir-cache");
    std::fs::copy(fixture(BREAKPAD_PDB), dir.join("dump_syms_regtest64.pdb")).unwrap();
    let cv = codeview_from_file(&fixture(BREAKPAD_EXE)).unwrap();
    let path = SymbolPath::parse(&format!("cache*{};{}", cache.display(), dir.display())).unwrap();
    let server = SymbolServer::new(path).offline(true);
    let found = server.find_pdb(cv.pdb_name(), &cv.id).unwrap();
    assert_eq!(found, dir.join("dump_syms_regtest64.pdb"));
    // Copied into the cache* directory in store layout.
    assert!(cache.join(store_path(cv.pdb_name(), &cv.id)).exists());
    // The flat file is checked: another age is not taken for it.
    let other = PdbId {
        guid: cv.id.guid,
        age: 9,
    };
    let e = server
        .find_pdb(cv.pdb_name(), &other)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("is {BREAKPAD_ID}")), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn malformed_pdb_errors_name_the_file() {
    let dir = tmp_dir("badpdb");
    let bad = dir.join("broken.pdb");
    std::fs::write(&bad, b"Microsoft C/C++ MSF 7.00\r\n\x1aDS\0\0\0garbage").unwrap();
    let e = load_pdb(&bad).unwrap_err().to_string();
    assert!(e.contains("broken.pdb"), "{e}");
    let full = std::fs::read(fixture("generated-demo/ntkrnlmp.pdb")).unwrap();
    let e = parse_pdb(&full[..full.len() / 3], "truncated.pdb")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("truncated.pdb: bad pdb:"), "{e}");
    let e = codeview_from_image(b"MZ not really", ImageLayout::File, "x.exe")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("x.exe: bad pe image"), "{e}");
    let e = codeview_from_file(&fixture("generated-demo/ntkrnlmp.pdb"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ntkrnlmp.pdb"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Seeded, bounded mutations of the generated kernel PDB: errors or profiles, never a
/// panic escaping the loader, never a hang.
#[test]
fn fuzz_pdb() {
    let seed = std::fs::read(fixture("generated-demo/ntkrnlmp.pdb")).unwrap();
    let mut rng = SmallRng::seed_from_u64(0x5044_4220);
    let mut ok = 0;
    for _ in 0..300 {
        let input = mutate(&mut rng, &seed);
        ok += usize::from(within("pdb mutant", CASE_LIMIT, move || {
            let Ok(p) = parse_pdb(&input, "fuzz.pdb") else {
                return false;
            };
            // Lookups on whatever came out stay in bounds.
            let _ = p.offset_of("_EPROCESS", "ActiveProcessLinks");
            for (id, _) in p.types.iter() {
                let _ = p.types.size_of(id);
                let _ = p.types.describe(id);
            }
            true
        }));
    }
    eprintln!("fuzz_pdb: {ok} of 300 mutants still parsed");
}

#[test]
fn fuzz_pe_codeview() {
    let seed = std::fs::read(fixture("generated-demo/ntoskrnl.exe")).unwrap();
    let mut rng = SmallRng::seed_from_u64(0x5045);
    for _ in 0..3000 {
        let input = mutate(&mut rng, &seed);
        within("pe mutant", CASE_LIMIT, move || {
            let _ = codeview_from_image(&input, ImageLayout::File, "fuzz.exe");
            let _ = codeview_from_image(&input, ImageLayout::Memory, "fuzz.exe");
        });
    }
}

/// Byte-level mutations: random bytes, page-aligned overwrites (MSF pages), truncation.
fn mutate(rng: &mut SmallRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.gen_range(1..8) {
        if v.is_empty() {
            break;
        }
        let i = rng.gen_range(0..v.len());
        match rng.gen_range(0..6) {
            0 | 1 => v[i] = rng.r#gen(),
            2 => {
                let n = rng.gen_range(1..5).min(v.len() - i);
                for b in &mut v[i..i + n] {
                    *b = 0xff;
                }
            }
            3 => {
                let n = rng.gen_range(1..5).min(v.len() - i);
                for b in &mut v[i..i + n] {
                    *b = 0;
                }
            }
            4 => {
                if rng.gen_range(0..8) == 0 {
                    v.truncate(i)
                }
            }
            _ => {
                let x: u32 = rng.gen_range(0..0x2000);
                let at = i & !3;
                if at + 4 <= v.len() {
                    v[at..at + 4].copy_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
    v
}

#[test]
fn pdb_profiles_round_trip_through_the_cache() {
    use vmi_profile::cache::{self, CacheKey};
    for pdb in [BREAKPAD_PDB, "generated-demo/ntkrnlmp.pdb"] {
        let p = load_pdb(&fixture(pdb)).unwrap();
        let key = CacheKey::for_profile(&p).unwrap();
        assert!(matches!(key, CacheKey::Pdb(_)));
        let back = cache::decode(&cache::encode(&p, &key), &key, Path::new("x")).unwrap();
        assert_eq!(back, p, "{pdb}");
        assert_eq!(back.metadata, p.metadata);
        assert_eq!(
            back.offset_of("_LIST_ENTRY", "Blink").unwrap(),
            p.offset_of("_LIST_ENTRY", "Blink").unwrap()
        );
        let first = p.symbols.iter().next().unwrap();
        assert_eq!(
            back.symbol_address(&first.name).ok(),
            p.symbol_address(&first.name).ok()
        );
    }
}

/// A PDB profile converts to Volatility ISF and back with the same layouts.
#[test]
fn pdb_profile_exports_to_isf() {
    use vmi_profile::isf::{ExportOptions, export_isf, parse_isf};
    let p = load_pdb(&fixture("generated-demo/ntkrnlmp.pdb")).unwrap();
    let json = serde_json::to_vec(&export_isf(&p, &ExportOptions::default())).unwrap();
    let back = parse_isf(&json, "exported.json").unwrap();
    for (ty, f) in [
        ("_EPROCESS", "ActiveProcessLinks"),
        ("_EPROCESS", "UniqueProcessId"),
        ("_EPROCESS", "ImageFileName"),
        ("_KLDR_DATA_TABLE_ENTRY", "BaseDllName"),
        ("_UNICODE_STRING", "Buffer"),
    ] {
        assert_eq!(
            back.offset_of(ty, f).unwrap(),
            p.offset_of(ty, f).unwrap(),
            "{ty}.{f}"
        );
    }
    assert_eq!(
        back.size_of("_EPROCESS").unwrap(),
        p.size_of("_EPROCESS").unwrap()
    );
    assert_eq!(
        back.symbol_address("PsActiveProcessHead").unwrap(),
        p.symbol_address("PsActiveProcessHead").unwrap()
    );
}
