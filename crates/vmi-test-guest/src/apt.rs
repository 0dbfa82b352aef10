//! Resolving and downloading Debian kernel packages with apt, never installing them.
//!
//! A [`KernelSpec`] is `[suite:]package`. Without a suite, or with the host's own suite
//! (`VERSION_CODENAME` of `/etc/os-release`), the host's apt configuration is used as is.
//! Any other suite gets a **private** apt configuration under
//! `<cache>/apt/<suite>/`: its own `sources.list`, lists, cache and (empty) status file,
//! passed with `-o Dir::...` options, so the host's apt state is never touched. Its
//! mirrors are taken from the host's sources (override: `VMI_GUEST_MIRROR`,
//! `VMI_GUEST_SECURITY_MIRROR`); signatures are checked against
//! `/usr/share/keyrings/debian-archive-keyring.gpg`.
//!
//! Metapackages (`linux-image-cloud-amd64`) are resolved with `apt-cache depends` to the
//! versioned image package they pull in.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{self, CacheLock};
use crate::error::{Error, Result};

/// The default kernel: bookworm's cloud kernel metapackage.
pub const DEFAULT_KERNEL: &str = "bookworm:linux-image-cloud-amd64";

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A Debian kernel package, optionally from a given suite (`trixie:linux-image-cloud-amd64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSpec {
    /// Debian suite (codename such as `bookworm`, `trixie`); `None`: the host's apt sources.
    pub suite: Option<String>,
    /// Package name: a metapackage or a versioned `linux-image-*` package.
    pub package: String,
}

impl Default for KernelSpec {
    fn default() -> Self {
        DEFAULT_KERNEL.parse().unwrap_or(KernelSpec {
            suite: Some("bookworm".into()),
            package: "linux-image-cloud-amd64".into(),
        })
    }
}

impl std::str::FromStr for KernelSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (suite, package) = match s.split_once(':') {
            Some((a, b)) => (Some(a.to_owned()), b.to_owned()),
            None => (None, s.to_owned()),
        };
        let ok = |x: &str| {
            !x.is_empty()
                && x.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-._".contains(&b))
        };
        if !ok(&package) || suite.as_deref().is_some_and(|x| !ok(x)) {
            return Err(Error::Config(format!(
                "bad kernel spec `{s}` (want [suite:]package)"
            )));
        }
        Ok(KernelSpec { suite, package })
    }
}

impl std::fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.suite {
            Some(s) => write!(f, "{s}:{}", self.package),
            None => f.write_str(&self.package),
        }
    }
}

/// The host's Debian codename.
pub fn host_codename() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// An apt configuration: the host's, or a private one for another suite.
#[derive(Debug, Clone)]
pub struct Apt {
    /// Root of the private configuration; `None` for the host's.
    private: Option<PathBuf>,
    /// Suite, for messages.
    label: String,
}

/// A resolved image package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Versioned image package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// Its version, e.g. `6.1.192-2`.
    pub version: String,
}

impl Resolved {
    /// The `.deb` file name `apt-get download` produces.
    pub fn deb_name(&self) -> String {
        format!(
            "{}_{}_amd64.deb",
            self.package,
            self.version.replace(':', "%3a")
        )
    }
}

impl Apt {
    /// The apt configuration for `spec`.
    pub fn for_spec(spec: &KernelSpec) -> Apt {
        match &spec.suite {
            Some(s) if host_codename().as_deref() != Some(s.as_str()) => Apt {
                private: Some(cache::cache_dir().join("apt").join(cache::sanitize(s))),
                label: s.clone(),
            },
            _ => Apt {
                private: None,
                label: host_codename().unwrap_or_else(|| "host".into()),
            },
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        if let Some(root) = &self.private {
            let d = |p: &str| root.join(p).display().to_string();
            for (k, v) in [
                ("Dir::Etc::SourceList", d("sources.list")),
                ("Dir::Etc::SourceParts", d("sources.list.d")),
                ("Dir::Etc::Preferences", d("preferences")),
                ("Dir::Etc::PreferencesParts", d("preferences.d")),
                ("Dir::State::Lists", d("lists")),
                ("Dir::State::status", d("status")),
                ("Dir::State::extended_states", d("extended_states")),
                ("Dir::Cache", d("cache")),
                ("APT::Architecture", "amd64".into()),
                ("APT::Architectures", "amd64".into()),
                ("Acquire::Languages", "none".into()),
                ("APT::Sandbox::User", "root".into()),
            ] {
                c.arg("-o").arg(format!("{k}={v}"));
            }
        } else {
            c.arg("-o").arg("APT::Sandbox::User=root");
        }
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    fn setup_private(&self, root: &Path, suite: &str) -> Result<()> {
        for d in [
            "sources.list.d",
            "preferences.d",
            "lists/partial",
            "cache/archives/partial",
        ] {
            cache::mkdir(&root.join(d))?;
        }
        let status = root.join("status");
        if !status.exists() {
            std::fs::write(&status, b"").map_err(Error::io("write", &status))?;
        }
        let (main, security) = mirrors();
        let main = main.ok_or_else(|| Error::KernelResolve {
            spec: suite.into(),
            detail: "no Debian mirror in the host's apt sources; set VMI_GUEST_MIRROR".into(),
        })?;
        let opt = format!("[signed-by={KEYRING}]");
        let mut list = format!("deb {opt} {main} {suite} main\n");
        if !matches!(suite, "sid" | "unstable" | "experimental") {
            list.push_str(&format!("deb {opt} {main} {suite}-updates main\n"));
            if let Some(sec) = security {
                list.push_str(&format!("deb {opt} {sec} {suite}-security main\n"));
            }
        }
        cache::write_atomic(&root.join("sources.list"), list.as_bytes())
    }

    /// `apt-get update` (for the host configuration: the host's lists).
    pub fn update(&self) -> Result<()> {
        let _lock = CacheLock::acquire("apt")?;
        self.update_locked()
    }

    /// `apt-get update` unless the lists exist, checked under the lock (so parallel test
    /// processes that all found no lists update once).
    fn update_if_missing(&self) -> Result<()> {
        let _lock = CacheLock::acquire("apt")?;
        if self.has_lists() {
            return Ok(());
        }
        self.update_locked()
    }

    fn update_locked(&self) -> Result<()> {
        if let Some(root) = &self.private {
            self.setup_private(root, &self.label)?;
        }
        eprintln!("[vmi-test-guest] apt-get update ({})", self.label);
        cache::run(self.command("apt-get").args(["update", "-q"]))?;
        Ok(())
    }

    fn has_lists(&self) -> bool {
        let dir = match &self.private {
            Some(root) => root.join("lists"),
            None => PathBuf::from("/var/lib/apt/lists"),
        };
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
            })
            .unwrap_or(false)
    }

    /// Resolve a (meta)package to the image package and version, without updating.
    pub fn resolve_cached_lists(&self, package: &str) -> Result<Resolved> {
        let fail = |detail: String| Error::KernelResolve {
            spec: package.into(),
            detail,
        };
        let out = cache::run(self.command("apt-cache").args(["depends", package]))
            .map_err(|e| fail(e.to_string()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let image = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .map(|d| d.trim().trim_start_matches('<').trim_end_matches('>'))
            .find(|d| d.starts_with("linux-image-"))
            .unwrap_or(package)
            .to_owned();
        let out = cache::run(
            self.command("apt-cache")
                .args(["show", "--no-all-versions", &image]),
        )
        .map_err(|e| fail(e.to_string()))?;
        let show = String::from_utf8_lossy(&out.stdout);
        let version = show
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .ok_or_else(|| fail(format!("`apt-cache show {image}` has no Version")))?
            .trim()
            .to_owned();
        Ok(Resolved {
            package: image,
            version,
        })
    }

    /// Resolve, running `apt-get update` once if the lists are missing or do not know the
    /// package.
    pub fn resolve(&self, package: &str) -> Result<Resolved> {
        if !self.has_lists() {
            self.update_if_missing()?;
        }
        match self.resolve_cached_lists(package) {
            Ok(r) => Ok(r),
            Err(first) => {
                eprintln!("[vmi-test-guest] {first}; updating apt lists");
                self.update()?;
                self.resolve_cached_lists(package)
            }
        }
    }

    /// The candidate version of each of `packages` (plain packages, no metapackage
    /// resolution), in the given order, with one `apt-cache show` call; runs
    /// `apt-get update` once if the lists are missing or do not know a package.
    pub fn versions(&self, packages: &[&str]) -> Result<Vec<Resolved>> {
        if !self.has_lists() {
            self.update_if_missing()?;
        }
        match self.versions_cached_lists(packages) {
            Ok(r) => Ok(r),
            Err(first) => {
                eprintln!("[vmi-test-guest] {first}; updating apt lists");
                self.update()?;
                self.versions_cached_lists(packages)
            }
        }
    }

    fn versions_cached_lists(&self, packages: &[&str]) -> Result<Vec<Resolved>> {
        let fail = |detail: String| Error::KernelResolve {
            spec: packages.join(" "),
            detail,
        };
        let out = cache::run(
            self.command("apt-cache")
                .args(["show", "--no-all-versions"])
                .args(packages),
        )
        .map_err(|e| fail(e.to_string()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut found = std::collections::HashMap::new();
        for stanza in text.split("\n\n") {
            let field = |k: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim().to_owned())
            };
            if let (Some(p), Some(v)) = (field("Package: "), field("Version: ")) {
                found.entry(p).or_insert(v);
            }
        }
        packages
            .iter()
            .map(|p| {
                let version = found
                    .get(*p)
                    .ok_or_else(|| fail(format!("`apt-cache show` has no version of {p}")))?;
                Ok(Resolved {
                    package: (*p).to_owned(),
                    version: version.clone(),
                })
            })
            .collect()
    }

    /// Download `r`'s `.deb` into `dir` (if not there yet); returns its path.
    pub fn download(&self, r: &Resolved, dir: &Path) -> Result<PathBuf> {
        let target = dir.join(r.deb_name());
        if target.is_file() {
            return Ok(target);
        }
        let _lock = CacheLock::acquire("apt")?;
        let tmp = dir.join(format!("download-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        cache::mkdir(&tmp)?;
        eprintln!(
            "[vmi-test-guest] apt-get download {}={} ({})",
            r.package, r.version, self.label
        );
        let res = cache::run(self.command("apt-get").current_dir(&tmp).args([
            "download",
            "-q",
            &format!("{}={}", r.package, r.version),
        ]));
        let moved = res.and_then(|_| {
            std::fs::rename(tmp.join(r.deb_name()), &target)
                .map_err(Error::io("move .deb", &target))
        });
        let _ = std::fs::remove_dir_all(&tmp);
        moved.map(|_| target)
    }
}

/// The host's Debian mirror URIs `(main, security)`, from `/etc/apt/sources.list{,.d}`
/// (one-line and deb822 formats) or `VMI_GUEST_MIRROR` / `VMI_GUEST_SECURITY_MIRROR`.
pub fn mirrors() -> (Option<String>, Option<String>) {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (mut main, mut sec) = (env("VMI_GUEST_MIRROR"), env("VMI_GUEST_SECURITY_MIRROR"));
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        v.sort();
        files.extend(v);
    }
    let mut found: Vec<(String, Vec<String>)> = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => found.extend(parse_deb822(&text)),
            Some("list") => found.extend(parse_one_line(&text)),
            _ => {}
        }
    }
    for (uri, suites) in found {
        let is_sec = suites
            .iter()
            .any(|s| s.ends_with("-security") || s.ends_with("/updates"));
        let debianish = uri.contains("debian");
        if !debianish {
            continue;
        }
        if is_sec {
            sec.get_or_insert(uri);
        } else {
            main.get_or_insert(uri);
        }
    }
    (main, sec)
}

fn parse_one_line(text: &str) -> Vec<(String, Vec<String>)> {
    let mut v = Vec::new();
    for l in text.lines().map(str::trim) {
        let Some(rest) = l.strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']').map_or("", |(_, r)| r),
            None => rest,
        };
        let mut it = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (it.next(), it.next()) {
            v.push((uri.to_owned(), vec![suite.to_owned()]));
        }
    }
    v
}

fn parse_deb822(text: &str) -> Vec<(String, Vec<String>)> {
    let mut v = Vec::new();
    for stanza in text.split("\n\n") {
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut enabled = true;
        let mut is_deb = false;
        for l in stanza.lines() {
            if let Some(x) = l.strip_prefix("URIs:") {
                uris = x.split_whitespace().map(str::to_owned).collect();
            } else if let Some(x) = l.strip_prefix("Suites:") {
                suites = x.split_whitespace().map(str::to_owned).collect();
            } else if let Some(x) = l.strip_prefix("Types:") {
                is_deb = x.split_whitespace().any(|t| t == "deb");
            } else if let Some(x) = l.strip_prefix("Enabled:") {
                enabled = x.trim() != "no";
            }
        }
        if enabled && is_deb {
            for u in uris {
                v.push((u, suites.clone()));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parsing() {
        let s: KernelSpec = "trixie:linux-image-cloud-amd64".parse().unwrap();
        assert_eq!(s.suite.as_deref(), Some("trixie"));
        assert_eq!(s.package, "linux-image-cloud-amd64");
        let s: KernelSpec = "linux-image-6.1.0-56-cloud-amd64".parse().unwrap();
        assert_eq!(s.suite, None);
        assert!("trixie:".parse::<KernelSpec>().is_err());
        assert!("a b".parse::<KernelSpec>().is_err());
        assert_eq!(KernelSpec::default().to_string(), DEFAULT_KERNEL);
    }

    #[test]
    fn sources_parsing() {
        let d = "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n\
                 Components: main\n\nTypes: deb\nURIs: http://m.example/debian-security\n\
                 Suites: bookworm-security\nComponents: main\n";
        let v = parse_deb822(d);
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].1, vec!["bookworm-security".to_owned()]);
        let o = parse_one_line(
            "# c\ndeb [arch=amd64 signed-by=/k] http://m.example/debian bookworm main\n",
        );
        assert_eq!(
            o,
            vec![(
                "http://m.example/debian".to_owned(),
                vec!["bookworm".to_owned()]
            )]
        );
    }
}
