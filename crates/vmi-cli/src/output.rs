//! Human tables (coloured on a terminal) and JSON output.

use std::io::{self, Write};

use anstream::AutoStream;
use anstyle::{AnsiColor, Style};
use serde::Serialize;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned tables for people.
    Human,
    /// One JSON document on stdout (documented, stable schema).
    Json,
}

const HEADER: Style = Style::new().bold();
const DIM: Style = AnsiColor::BrightBlack.on_default();

/// A stdout that drops colour codes when it is not a terminal (or `NO_COLOR` is set).
pub fn stdout() -> AutoStream<io::StdoutLock<'static>> {
    AutoStream::auto(io::stdout().lock())
}

/// Prints `value` as pretty JSON.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A simple left-aligned table; the last column is not padded.
pub struct Table {
    headers: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers. Headers starting with `>` are right-aligned
    /// (the `>` is not printed).
    pub fn new<S: AsRef<str>>(headers: &[S]) -> Self {
        Self {
            headers: headers
                .iter()
                .map(|h| h.as_ref().trim_start_matches('>').to_owned())
                .collect(),
            right: headers
                .iter()
                .map(|h| h.as_ref().starts_with('>'))
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints the table.
    pub fn print(&self) -> io::Result<()> {
        let mut out = stdout();
        let n = self.headers.len();
        let mut width: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(n) {
                width[i] = width[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String], out: &mut dyn Write, style: Style| -> io::Result<()> {
            let mut s = String::new();
            for (i, cell) in cells.iter().enumerate().take(n) {
                let last = i + 1 == n;
                let pad = width[i].saturating_sub(cell.chars().count());
                if self.right[i] {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(cell);
                } else {
                    s.push_str(cell);
                    if !last {
                        s.push_str(&" ".repeat(pad));
                    }
                }
                if !last {
                    s.push_str("  ");
                }
            }
            writeln!(out, "{style}{}{style:#}", s.trim_end())
        };
        line(&self.headers, &mut out, HEADER)?;
        for row in &self.rows {
            line(row, &mut out, Style::new())?;
        }
        Ok(())
    }
}

/// Prints `key: value` lines with aligned keys.
pub fn key_values(pairs: &[(&str, String)]) -> io::Result<()> {
    let mut out = stdout();
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in pairs {
        writeln!(out, "{HEADER}{k:<w$}{HEADER:#}  {v}")?;
    }
    Ok(())
}

/// A classic hexdump: address, 16 bytes in hex, ASCII. Unreadable bytes (beyond
/// `readable`) are shown as `??`.
pub fn hexdump(start: u64, data: &[u8], readable: usize) -> io::Result<()> {
    let mut out = stdout();
    for (row, chunk) in data.chunks(16).enumerate() {
        let base = row * 16;
        let mut hex = String::new();
        let mut ascii = String::new();
        for i in 0..16 {
            if i == 8 {
                hex.push(' ');
            }
            match chunk.get(i) {
                Some(b) if base + i < readable => {
                    hex.push_str(&format!("{b:02x} "));
                    ascii.push(if b.is_ascii_graphic() || *b == b' ' {
                        *b as char
                    } else {
                        '.'
                    });
                }
                Some(_) => {
                    hex.push_str("?? ");
                    ascii.push('?');
                }
                None => hex.push_str("   "),
            }
        }
        let addr = start.wrapping_add(base as u64);
        writeln!(out, "{DIM}{addr:016x}{DIM:#}  {hex} |{ascii}|")?;
    }
    Ok(())
}
