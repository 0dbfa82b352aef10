//! `vmi scan`: YARA rules over the memory of processes (their VMAs/VADs as the OS layer
//! lists them), of the kernel, or over all of physical memory, through the core's
//! parallel scans ([`VmiCore::scan_processes`], [`VmiCore::scan`],
//! [`VmiCore::scan_physical`]).
//!
//! The rules are compiled once. Memory is cut into chunks of [`CHUNK`] bytes, each read
//! with [`OVERLAP`] bytes of the next, and each run of readable bytes is one YARA scan
//! (YARA-X, one scanner per worker thread). What this means for rules:
//! - a string match is reported by the chunk it starts in, so once; a match that
//!   straddles a chunk edge is seen whole when it is at most [`OVERLAP`] bytes long
//!   (a longer one may be cut short or missed);
//! - conditions see one run at a time: `filesize` is its length, offsets (`@a`,
//!   `uint32(0)`) count from its start, `#a` counts within it;
//! - a rule is reported at its string matches: a rule that matches without any (a
//!   condition with no strings) is not reported.
//!
//! Matches are printed as workers find them: in no particular order. At most
//! `--max-matches` per rule are printed (default [`DEFAULT_MAX_MATCHES`]; 0: all): the
//! others are counted, and reported on stderr and, with `--json`, in one closing
//! `{"truncated": true, "rule": ...}` object per rule. Memory stays bounded whatever the
//! guest holds: YARA-X keeps at most [`MAX_MATCHES_PER_PATTERN`] matches per string and
//! scan (as offsets into the run; a string that reaches it is reported as possibly
//! incomplete), a scan of one run keeps at most `--max-matches` of them per rule, each
//! with at most [`SHOWN`] bytes, and nothing else is collected but a count per rule.
//!
//! Live targets are paused for the whole scan by the caller's pause guard; Ctrl-C stops
//! the scan early (the remaining chunks are skipped) so the guard still resumes the VM.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::anyhow;
use serde_json::json;
use vmi_arch_amd64::Amd64;
use vmi_core::{
    AccessContext, AddressContext, Pa, ScanChunk, ScanOptions, ScanSummary, Va, VmiCore,
    VmiQueryRegisters, VmiRead,
};

use super::{Ctx, hex};
use crate::output::Format;
use crate::{Failure, ScanArgs};

/// Bytes per chunk.
pub const CHUNK: usize = 4 << 20;
/// Bytes of the next chunk scanned with each: the longest match seen whole across an edge.
pub const OVERLAP: usize = 64 << 10;
/// Bytes of each match kept and printed (its full length is printed too).
pub const SHOWN: usize = 64;
/// Matches printed per rule unless `--max-matches` says otherwise.
pub const DEFAULT_MAX_MATCHES: u64 = 10_000;
/// Largest rules file read.
const MAX_RULES_FILE: u64 = 256 << 20;
/// Problems warned about one by one (the rest are counted).
const MAX_PROBLEMS: usize = 100;
/// Exit code after Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

/// Compiled rules. Leaked: they live as long as the command (one scan a process), and
/// each worker thread keeps a scanner of them for the whole scan.
struct CompiledRules {
    rules: &'static yara_x::Rules,
}

/// Compiles the rules file at `path`; a failure carries YARA-X's own message.
fn compile(path: &Path) -> anyhow::Result<CompiledRules> {
    let shown = path.display();
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow!(e).context(format!("cannot open the rules file {shown}")))?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_RULES_FILE + 1),
        &mut text,
    )
    .map_err(|e| anyhow!(e).context(format!("cannot read the rules file {shown}")))?;
    if text.len() as u64 > MAX_RULES_FILE {
        return Err(anyhow!(
            "the rules file {shown} is larger than {} MiB",
            MAX_RULES_FILE >> 20
        ));
    }
    let text = String::from_utf8(text)
        .map_err(|_| anyhow!("the rules file {shown} is not YARA source text (UTF-8)"))?;
    let mut compiler = yara_x::Compiler::new();
    compiler.add_source(text.as_str()).map_err(|e| {
        anyhow!(
            "cannot compile the YARA rules in {shown}: {}",
            compile_message(&e, &text)
        )
    })?;
    Ok(CompiledRules {
        rules: Box::leak(Box::new(compiler.build())),
    })
}

/// A compile error as one line: `line N: title` (the line of its first label).
fn compile_message(e: &yara_x::errors::CompileError, text: &str) -> String {
    let title = e.title().replace('\n', " ");
    match e.labels().next() {
        Some(label) => {
            let at = label.span().range().start.min(text.len());
            let line = 1 + text.as_bytes()[..at]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            format!("line {line}: {title}")
        }
        None => title,
    }
}

/// Matches YARA-X keeps per pattern and scan; a pattern with that many is reported as
/// possibly incomplete.
const MAX_MATCHES_PER_PATTERN: usize = 1_000_000;

/// A string match of a rule in one run of bytes.
struct Hit {
    rule: String,
    string: String,
    /// Offset in the run.
    offset: usize,
    /// Full length of the match.
    length: usize,
    /// Its first [`SHOWN`] bytes at most.
    data: Vec<u8>,
}

/// What a scan of one run found.
struct Found {
    /// Matches that start in the run's owned bytes, at most the limit per rule.
    hits: Vec<Hit>,
    /// Matches beyond the limit, per rule: counted, not kept.
    beyond: BTreeMap<String, u64>,
    /// Strings with as many matches as YARA-X keeps (there may be more).
    overflow: Vec<String>,
}

/// The rules, scanned with one YARA-X scanner per worker thread.
struct Matcher {
    rules: &'static yara_x::Rules,
    /// Matches kept per rule and run (0: all): no more can be shown in total.
    limit: u64,
}

impl Matcher {
    fn new(rules: &'static yara_x::Rules, limit: u64) -> Self {
        Self { rules, limit }
    }

    /// The matches in `bytes` that start in its first `owned` bytes (at most the limit
    /// per rule, the others counted), and the strings that had as many matches as
    /// YARA-X keeps.
    fn scan(&self, bytes: &[u8], owned: usize) -> Result<Found, yara_x::ScanError> {
        // A scanner holds a WebAssembly instance of the rules: made once per thread and
        // rules (rayon's workers live for the whole scan), never shared.
        thread_local! {
            static SCANNER: std::cell::RefCell<Option<(usize, yara_x::Scanner<'static>)>> =
                const { std::cell::RefCell::new(None) };
        }
        let mut hits = Vec::new();
        let mut beyond = BTreeMap::new();
        let mut overflow = Vec::new();
        let mut record = |results: yara_x::ScanResults<'_, '_>| {
            for rule in results.matching_rules() {
                let name = match rule.namespace() {
                    "default" | "" => rule.identifier().to_owned(),
                    ns => format!("{ns}:{}", rule.identifier()),
                };
                let mut kept = 0u64;
                let mut more = 0u64;
                for pattern in rule.patterns() {
                    let mut seen = 0usize;
                    for m in pattern.matches() {
                        seen += 1;
                        let range = m.range();
                        if range.start >= owned {
                            continue;
                        }
                        if self.limit != 0 && kept >= self.limit {
                            more += 1;
                            continue;
                        }
                        kept += 1;
                        hits.push(Hit {
                            rule: name.clone(),
                            string: pattern.identifier().to_owned(),
                            offset: range.start,
                            length: range.len(),
                            data: m.data().iter().take(SHOWN).copied().collect(),
                        });
                    }
                    if seen >= MAX_MATCHES_PER_PATTERN {
                        overflow.push(format!("{name}:{}", pattern.identifier()));
                    }
                }
                if more > 0 {
                    *beyond.entry(name).or_insert(0) += more;
                }
            }
        };
        let key = std::ptr::from_ref(self.rules) as usize;
        SCANNER.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.as_ref().is_none_or(|(k, _)| *k != key) {
                let mut scanner = yara_x::Scanner::new(self.rules);
                scanner.max_matches_per_pattern(MAX_MATCHES_PER_PATTERN);
                *cell = Some((key, scanner));
            }
            let (_, scanner) = cell.as_mut().expect("set above");
            scanner.scan(bytes).map(&mut record)
        })?;
        Ok(Found {
            hits,
            beyond,
            overflow,
        })
    }
}

/// Whose memory a match is in.
#[derive(Clone, Copy)]
enum Owner {
    Process(u64),
    Kernel,
    Physical,
}

impl Owner {
    fn space(self) -> &'static str {
        match self {
            Owner::Process(_) => "process",
            Owner::Kernel => "kernel",
            Owner::Physical => "physical",
        }
    }
}

/// The region a run of bytes lies in.
struct Place<'a> {
    owner: Owner,
    /// Page-table root of a virtual region; `None`: the addresses are physical.
    root: Option<Pa>,
    start: u64,
    end: u64,
    path: Option<&'a str>,
    name: Option<&'a str>,
}

/// What the workers share while a scan runs.
struct Scan<'a, D: VmiRead> {
    core: &'a VmiCore<D>,
    matcher: Matcher,
    format: Format,
    bar: indicatif::ProgressBar,
    stop: Arc<AtomicBool>,
    matches: AtomicU64,
    /// Bytes given to YARA (less than the core's count when Ctrl-C stopped the scan).
    scanned: AtomicU64,
    /// The first failure to write the output (the scan stops on it).
    output_error: Mutex<Option<std::io::Error>>,
    /// Runs YARA could not scan, and strings with as many matches as it keeps.
    problems: Mutex<Vec<String>>,
    /// Problems beyond the first [`MAX_PROBLEMS`].
    more_problems: AtomicU64,
    /// Matches printed per rule (0: all).
    limit: u64,
    /// Per rule that matched: matches printed, and matches not printed (over the limit).
    counts: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl<D: VmiRead<Architecture = Amd64>> Scan<'_, D> {
    /// Scans one run of bytes of `place` and prints its matches.
    fn visit(&self, chunk: &ScanChunk<'_>, place: &Place<'_>) {
        if self.stop.load(Ordering::Relaxed) {
            return;
        }
        self.bar.inc(chunk.owned as u64);
        self.scanned
            .fetch_add(chunk.owned as u64, Ordering::Relaxed);
        let Found {
            hits,
            beyond,
            overflow,
        } = match self.matcher.scan(chunk.bytes, chunk.owned) {
            Ok(found) => found,
            Err(e) => {
                self.problem(format!(
                    "YARA could not scan {} bytes at {:#x}: {e}",
                    chunk.bytes.len(),
                    chunk.ctx.address
                ));
                return;
            }
        };
        for s in overflow {
            self.problem(format!(
                "string {s} has as many matches at {:#x} as YARA keeps (more may not be reported)",
                chunk.ctx.address
            ));
        }
        let hits = self.admit(hits, beyond);
        if hits.is_empty() {
            return;
        }
        let mut lines = String::new();
        for (i, h) in hits.iter().enumerate() {
            // Ctrl-C also stops a run with many matches (YARA-X keeps up to a million a string).
            if i % 4096 == 4095 && self.stop.load(Ordering::Relaxed) {
                return;
            }
            let at = chunk.ctx.address.wrapping_add(h.offset as u64);
            let (va, pa) = match place.root {
                Some(root) => (
                    Some(at),
                    self.core
                        .translate(AddressContext::new(Va(at), root))
                        .ok()
                        .map(|t| t.pa.0),
                ),
                None => (None, Some(at)),
            };
            lines.push_str(&self.line(h, place, va, pa));
            lines.push('\n');
        }
        self.matches.fetch_add(hits.len() as u64, Ordering::Relaxed);
        self.bar.suspend(|| {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(lines.as_bytes()).and_then(|()| out.flush()) {
                self.stop.store(true, Ordering::Relaxed);
                self.output_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(e);
            }
        });
    }

    /// The hits that are printed (each rule's first `limit`, in the order workers come);
    /// the others, and those `beyond` the limit already, are counted.
    fn admit(&self, hits: Vec<Hit>, beyond: BTreeMap<String, u64>) -> Vec<Hit> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut shown = Vec::with_capacity(hits.len());
        for h in hits {
            let (printed, hidden) = counts.entry(h.rule.clone()).or_insert((0, 0));
            if self.limit == 0 || *printed < self.limit {
                *printed += 1;
                shown.push(h);
            } else {
                *hidden += 1;
            }
        }
        for (rule, n) in beyond {
            let (_, hidden) = counts.entry(rule).or_insert((0, 0));
            *hidden = hidden.saturating_add(n);
        }
        shown
    }

    /// Records a problem to warn about after the scan (the first [`MAX_PROBLEMS`]; a
    /// count of the others).
    fn problem(&self, what: String) {
        let mut problems = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if problems.len() < MAX_PROBLEMS {
            problems.push(what);
        } else {
            self.more_problems.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One match as a line of the table or a JSON object (`docs/cli-json.md`).
    fn line(&self, h: &Hit, place: &Place<'_>, va: Option<u64>, pa: Option<u64>) -> String {
        let bytes: String = h.data.iter().map(|b| format!("{b:02x}")).collect();
        let pid = match place.owner {
            Owner::Process(pid) => Some(pid),
            _ => None,
        };
        if self.format == Format::Json {
            return json!({
                "rule": h.rule,
                "string": h.string,
                "space": place.owner.space(),
                "pid": pid,
                "va": va.map(hex),
                "pa": pa.map(hex),
                "region": {
                    "start": hex(place.start),
                    "end": hex(place.end),
                    "path": place.path,
                    "name": place.name,
                },
                "length": h.length,
                "bytes": bytes,
            })
            .to_string();
        }
        let who = pid.map_or_else(|| place.owner.space().to_owned(), |p| p.to_string());
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:#x}"));
        let region = format!(
            "{:x}-{:x} {}",
            place.start,
            place.end,
            place.name.or(place.path).unwrap_or("")
        );
        let more = if h.length > h.data.len() { "…" } else { "" };
        format!(
            "{:<20} {:>8} {:>18} {:>14} {:>6}  {bytes}{more}  {}",
            format!("{} {}", h.rule, h.string),
            who,
            opt(va),
            opt(pa),
            h.length,
            region.trim_end()
        )
    }
}

/// The kernel's ranges in its address space: the image (`_text`, else `_stext`, up to
/// `_end`, where the OS layer has these symbols: Linux) and every loaded module (on
/// Windows the kernel image is one of them).
fn kernel_places<'a, D: VmiRead<Architecture = Amd64> + VmiQueryRegisters + 'static>(
    ctx: &Ctx<'_, D>,
    os: &super::DynOs<D>,
    modules: &'a [vmi_core::OsModule],
) -> Vec<(u64, u64, Option<&'a str>, Option<&'a str>)> {
    let mut places = Vec::new();
    let symbol = |name: &str| os.kernel_symbol(ctx.core, name).ok();
    if let (Some(start), Some(end)) = (symbol("_text").or_else(|| symbol("_stext")), symbol("_end"))
        && start.0 < end.0
    {
        places.push((start.0, end.0, None, Some("[kernel]")));
    }
    for m in modules {
        places.push((
            m.base.0,
            m.base.0.saturating_add(m.size),
            m.path.as_deref(),
            Some(m.name.as_str()),
        ));
    }
    places
}

impl<D: VmiRead<Architecture = Amd64> + VmiQueryRegisters + 'static> Ctx<'_, D> {
    /// `vmi scan`.
    pub(super) fn scan(&self, args: &ScanArgs) -> Result<(), Failure> {
        let compiled = compile(&args.rules)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .map_err(|e| anyhow!("cannot install the Ctrl-C handler: {e}"))?;
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} scanned {bytes} ({bytes_per_sec}) {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        let scan = Scan {
            core: self.core,
            matcher: Matcher::new(compiled.rules, args.max_matches),
            format: self.format(),
            bar,
            stop,
            matches: AtomicU64::new(0),
            scanned: AtomicU64::new(0),
            output_error: Mutex::new(None),
            problems: Mutex::new(Vec::new()),
            more_problems: AtomicU64::new(0),
            limit: args.max_matches,
            counts: Mutex::new(BTreeMap::new()),
        };
        let options = ScanOptions {
            chunk_size: CHUNK,
            overlap: OVERLAP,
            threads: args.threads,
        };
        // Timed from here: the OS layer is found first (it may build the profile).
        let os = if args.physical {
            None
        } else {
            let os = self.os()?;
            for &pid in &args.pid {
                self.find(&os, pid)?;
            }
            Some(os)
        };
        if scan.format == Format::Human {
            crate::commands::watch::write_line(&format!(
                "{:<20} {:>8} {:>18} {:>14} {:>6}  BYTES  REGION",
                "RULE STRING", "PID", "VA", "PA", "LENGTH"
            ))?;
        }
        let t = Instant::now();
        let (regions, summary) = if let Some(os) = os {
            if args.kernel_space {
                let root = os.kernel_translation_root(self.core)?;
                let list = os.module_list(self.core)?;
                self.warn_skipped("module", &list.skipped);
                let places = kernel_places(self, &os, &list.items);
                if places.is_empty() {
                    return Err(anyhow!(
                        "no kernel ranges: the {} layer gives neither the kernel image's symbols nor modules",
                        os.name()
                    )
                    .into());
                }
                let ranges: Vec<(AccessContext, u64)> = places
                    .iter()
                    .map(|&(start, end, _, _)| {
                        (
                            AccessContext::paging(Va(start), root),
                            end.saturating_sub(start),
                        )
                    })
                    .collect();
                let summary = self.core.scan(&ranges, options, |chunk| {
                    if let Some(&(start, end, path, name)) = places.get(chunk.range) {
                        let place = Place {
                            owner: Owner::Kernel,
                            root: Some(root),
                            start,
                            end,
                            path,
                            name,
                        };
                        scan.visit(chunk, &place)
                    }
                })?;
                (ranges.len(), summary)
            } else {
                let pids: Vec<u64> = args.pid.iter().map(|&p| u64::from(p)).collect();
                let result = self.core.scan_processes(
                    &*os,
                    (!pids.is_empty()).then_some(pids.as_slice()),
                    options,
                    |region, chunk| {
                        let place = Place {
                            owner: Owner::Process(region.pid),
                            root: Some(region.root),
                            start: region.region.start.0,
                            end: region.region.end.0,
                            path: region.region.path.as_deref(),
                            name: region.region.name.as_deref(),
                        };
                        scan.visit(chunk, &place)
                    },
                )?;
                for (pid, e) in &result.skipped {
                    self.warn(format_args!("process {pid} was not scanned: {e}"));
                }
                (result.regions.len(), result.summary)
            }
        } else {
            let ranges = self.core.driver().physical_ranges()?;
            let summary = self.core.scan_physical(options, |chunk| {
                let r = ranges.get(chunk.range);
                let place = Place {
                    owner: Owner::Physical,
                    root: None,
                    start: r.map_or(0, |r| r.start.0),
                    end: r.map_or(0, |r| r.end.0),
                    path: None,
                    name: None,
                };
                scan.visit(chunk, &place)
            })?;
            (ranges.len(), summary)
        };
        let elapsed = t.elapsed();
        scan.bar.finish_and_clear();
        if let Some(e) = scan
            .output_error
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
        {
            return Err(e.into());
        }
        for p in scan
            .problems
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
        {
            self.warn(p);
        }
        match scan.more_problems.into_inner() {
            0 => {}
            n => self.warn(format_args!("{n} more problems like the above")),
        }
        let summary = ScanSummary {
            bytes_scanned: scan.scanned.into_inner(),
            ..summary
        };
        let counts = scan.counts.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut not_shown = 0u64;
        let mut notes = String::new();
        for (rule, &(shown, hidden)) in counts.iter().filter(|(_, c)| c.1 > 0) {
            not_shown = not_shown.saturating_add(hidden);
            // A note, not a warning: nothing failed to be read, so the exit code stays 0.
            eprintln!(
                "note: rule {rule}: {hidden} more matches not shown (the first {shown} are; \
                 --max-matches {} sets the limit per rule, 0 shows all)",
                scan.limit
            );
            if scan.format == Format::Json {
                notes.push_str(
                    &json!({
                        "truncated": true,
                        "rule": rule,
                        "shown": shown,
                        "not_shown": hidden,
                        "max_matches": scan.limit,
                    })
                    .to_string(),
                );
                notes.push('\n');
            }
        }
        if !notes.is_empty() {
            let mut out = std::io::stdout().lock();
            out.write_all(notes.as_bytes()).and_then(|()| out.flush())?;
        }
        summary_line(
            regions,
            &summary,
            scan.matches.into_inner(),
            not_shown,
            elapsed,
        );
        if scan.stop.load(Ordering::SeqCst) {
            return Err(Failure {
                code: EXIT_INTERRUPTED,
                error: anyhow!("interrupted: the scan stopped early, its matches are incomplete"),
            });
        }
        Ok(())
    }
}

/// The closing line on stderr.
fn summary_line(
    regions: usize,
    summary: &ScanSummary,
    matches: u64,
    not_shown: u64,
    elapsed: std::time::Duration,
) {
    let secs = elapsed.as_secs_f64();
    let mib = summary.bytes_scanned as f64 / f64::from(1 << 20);
    let more = if not_shown > 0 {
        format!(" ({not_shown} more not shown: --max-matches)")
    } else {
        String::new()
    };
    eprintln!(
        "scanned {regions} regions, {} bytes ({mib:.1} MiB) in {secs:.2} s ({:.0} MiB/s), {} unreadable pages, {matches} matches{more}",
        summary.bytes_scanned,
        if secs > 0.0 { mib / secs } else { 0.0 },
        summary.pages_unreadable,
    );
}
