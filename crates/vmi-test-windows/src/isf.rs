//! A tiny resolver over a volatility3 ISF, independent of `vmi-profile`.
//!
//! It answers what the builder needs: type sizes, field offsets by dotted path with array
//! indices (`Run[1].BasePage`), bitfield positions, symbol RVAs and the gap to the next
//! symbol (the upper bound of a global's size).

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::BuildError;

/// A field's type, as far as writing values needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An integer, pointer or enum of this many bytes.
    Scalar(u64),
    /// A bitfield inside a storage unit of `size` bytes.
    Bits {
        /// Storage unit size.
        size: u64,
        /// First bit.
        position: u32,
        /// Width.
        length: u32,
    },
    /// A struct, union or array of this many bytes.
    Blob(u64),
}

#[derive(Clone, Debug)]
struct Field {
    offset: u64,
    ty: Value,
}

#[derive(Clone, Debug)]
struct UserType {
    size: u64,
    fields: HashMap<String, Field>,
}

/// A loaded ISF.
#[derive(Debug)]
pub struct Isf {
    types: HashMap<String, UserType>,
    bases: HashMap<String, u64>,
    enums: HashMap<String, u64>,
    symbols: HashMap<String, u64>,
    sorted: Vec<u64>,
    /// PDB GUID, 32 upper-case hex digits as printed.
    pub guid: String,
    /// PDB age.
    pub age: u32,
    /// PDB file name (`ntkrnlmp.pdb`).
    pub pdb_name: String,
}

fn bad(detail: impl Into<String>) -> BuildError {
    BuildError::Isf(detail.into())
}

impl Isf {
    /// Loads `<GUID>-<age>.json` or `.json.xz`.
    pub fn load(path: &Path) -> Result<Self, BuildError> {
        let raw = std::fs::read(path).map_err(|e| BuildError::Io(path.display().to_string(), e))?;
        let json = if raw.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
            let mut out = Vec::with_capacity(raw.len() * 12);
            lzma_rs::xz_decompress(&mut raw.as_slice(), &mut out)
                .map_err(|e| bad(format!("{}: xz: {e}", path.display())))?;
            out
        } else {
            raw
        };
        Self::parse(&json)
    }

    /// Parses ISF JSON text.
    pub fn parse(json: &[u8]) -> Result<Self, BuildError> {
        let root: Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
        let obj = |k: &str| {
            root.get(k)
                .and_then(Value::as_object)
                .ok_or_else(|| bad(format!("no {k}")))
        };
        let mut types = HashMap::new();
        for (name, t) in obj("user_types")? {
            let size = t.get("size").and_then(Value::as_u64).unwrap_or(0);
            let mut fields = HashMap::new();
            if let Some(fs) = t.get("fields").and_then(Value::as_object) {
                for (fname, f) in fs {
                    fields.insert(
                        fname.clone(),
                        Field {
                            offset: f.get("offset").and_then(Value::as_u64).unwrap_or(0),
                            ty: f.get("type").cloned().unwrap_or(Value::Null),
                        },
                    );
                }
            }
            types.insert(name.clone(), UserType { size, fields });
        }
        let sizes = |k: &str| -> Result<HashMap<String, u64>, BuildError> {
            Ok(obj(k)?
                .iter()
                .map(|(n, v)| {
                    (
                        n.clone(),
                        v.get("size").and_then(Value::as_u64).unwrap_or(0),
                    )
                })
                .collect())
        };
        let bases = sizes("base_types")?;
        let enums = sizes("enums")?;
        let symbols: HashMap<String, u64> = obj("symbols")?
            .iter()
            .filter_map(|(n, v)| Some((n.clone(), v.get("address")?.as_u64()?)))
            .collect();
        let mut sorted: Vec<u64> = symbols.values().copied().collect();
        sorted.sort_unstable();
        sorted.dedup();
        let pdb = root
            .pointer("/metadata/windows/pdb")
            .ok_or_else(|| bad("no metadata.windows.pdb"))?;
        if bases.get("pointer") != Some(&8) {
            return Err(bad("only x64 ISFs are supported"));
        }
        Ok(Self {
            types,
            bases,
            enums,
            symbols,
            sorted,
            guid: pdb
                .get("GUID")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_uppercase(),
            age: pdb.get("age").and_then(Value::as_u64).unwrap_or(0) as u32,
            pdb_name: pdb
                .get("database")
                .and_then(Value::as_str)
                .unwrap_or("ntkrnlmp.pdb")
                .to_owned(),
        })
    }

    /// `<GUID>-<age>`, the ISF's file stem.
    pub fn key(&self) -> String {
        format!("{}-{}", self.guid, self.age)
    }

    /// Whether the type exists.
    pub fn has_type(&self, t: &str) -> bool {
        self.types.contains_key(t)
    }

    /// Whether the symbol exists.
    pub fn has_sym(&self, s: &str) -> bool {
        self.symbols.contains_key(s)
    }

    /// The symbol's RVA.
    pub fn rva(&self, s: &str) -> Result<u64, BuildError> {
        self.symbols
            .get(s)
            .copied()
            .ok_or_else(|| bad(format!("no symbol {s}")))
    }

    /// The highest symbol RVA.
    pub fn max_rva(&self) -> u64 {
        self.sorted.last().copied().unwrap_or(0)
    }

    /// Bytes from `s` to the next symbol.
    pub fn gap(&self, s: &str) -> Result<u64, BuildError> {
        let a = self.rva(s)?;
        let i = self.sorted.partition_point(|&x| x <= a);
        Ok(self.sorted.get(i).map_or(1 << 20, |&n| n - a))
    }

    /// Size of a user type or base type.
    pub fn sizeof(&self, t: &str) -> Result<u64, BuildError> {
        self.types
            .get(t)
            .map(|u| u.size)
            .or_else(|| self.bases.get(t).copied())
            .ok_or_else(|| bad(format!("no type {t}")))
    }

    fn size_of_desc(&self, d: &Value) -> Result<u64, BuildError> {
        let kind = d.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = d.get("name").and_then(Value::as_str).unwrap_or("");
        match kind {
            "base" => self.sizeof(name),
            "pointer" => Ok(8),
            "struct" | "union" | "class" => self.sizeof(name),
            "enum" => self
                .enums
                .get(name)
                .copied()
                .ok_or_else(|| bad(format!("no enum {name}"))),
            "array" => {
                let n = d.get("count").and_then(Value::as_u64).unwrap_or(0);
                Ok(n * self.size_of_desc(d.get("subtype").unwrap_or(&Value::Null))?)
            }
            "bitfield" => self.size_of_desc(d.get("type").unwrap_or(&Value::Null)),
            "function" => Ok(0),
            _ => Err(bad(format!("size of {d}"))),
        }
    }

    /// Offset and kind of `path` inside `t` (`"Core.u.VadFlags.Protection"`, `"Run[1].PageCount"`).
    pub fn resolve(&self, t: &str, path: &str) -> Result<(u64, Kind), BuildError> {
        let missing = || bad(format!("{t} has no field {path}"));
        let mut off = 0u64;
        let mut desc = serde_json::json!({"kind": "struct", "name": t});
        for part in path.split('.') {
            let (name, index) = match part.split_once('[') {
                Some((n, rest)) => (
                    n,
                    Some(
                        rest.trim_end_matches(']')
                            .parse::<u64>()
                            .map_err(|_| missing())?,
                    ),
                ),
                None => (part, None),
            };
            let kind = desc.get("kind").and_then(Value::as_str).unwrap_or("");
            if !matches!(kind, "struct" | "union" | "class") {
                return Err(missing());
            }
            let tn = desc.get("name").and_then(Value::as_str).unwrap_or("");
            let f = self
                .types
                .get(tn)
                .and_then(|u| u.fields.get(name))
                .ok_or_else(missing)?;
            off += f.offset;
            desc = f.ty.clone();
            if let Some(i) = index {
                if desc.get("kind").and_then(Value::as_str) != Some("array") {
                    return Err(missing());
                }
                let sub = desc.get("subtype").cloned().unwrap_or(Value::Null);
                off += i * self.size_of_desc(&sub)?;
                desc = sub;
            }
        }
        let kind = match desc.get("kind").and_then(Value::as_str).unwrap_or("") {
            "bitfield" => Kind::Bits {
                size: self.size_of_desc(desc.get("type").unwrap_or(&Value::Null))?,
                position: desc
                    .get("bit_position")
                    .and_then(Value::as_u64)
                    .unwrap_or(0) as u32,
                length: desc.get("bit_length").and_then(Value::as_u64).unwrap_or(0) as u32,
            },
            "base" | "pointer" | "enum" => Kind::Scalar(self.size_of_desc(&desc)?),
            _ => Kind::Blob(self.size_of_desc(&desc)?),
        };
        Ok((off, kind))
    }

    /// Whether `t.path` exists.
    pub fn has(&self, t: &str, path: &str) -> bool {
        self.has_type(t) && self.resolve(t, path).is_ok()
    }

    /// Offset of `t.path`.
    pub fn off(&self, t: &str, path: &str) -> Result<u64, BuildError> {
        self.resolve(t, path).map(|r| r.0)
    }

    /// The first of `paths` that exists in `t`.
    pub fn first<'p>(&self, t: &str, paths: &[&'p str]) -> Option<&'p str> {
        paths.iter().copied().find(|p| self.has(t, p))
    }
}
