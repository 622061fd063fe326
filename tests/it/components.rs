//! The real outside programs some tests start (`redis-server`, `redis-cli`,
//! `nginx`, `curl`), found once per process. A test that needs one asks
//! [`require`]: on a machine without it the test is skipped with one line
//! on stderr naming the program and its install command, and the run ends
//! with a summary of every skip (an `atexit` hook: libtest returns from
//! `main` or calls `exit`, and both run it after its own result line).
//! With `CI=true` or `SSED_REQUIRE_COMPONENTS=1` a missing program fails
//! the test instead, so CI cannot go green by skipping.
//!
//! Shared verbatim by the integration tests (`tests/it`) and the library's
//! unit tests (`src/reactor/bus/tests.rs` includes this file by path), so
//! it uses nothing but std and libc. It must not start servers itself: it
//! only says whether a program can run.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once};

/// A program some tests run.
pub struct Component {
    /// How the skip line names it.
    pub name: &'static str,
    /// An environment variable that points at the binary to use instead of
    /// the default (a nonexistent path makes the component unavailable).
    pub env: &'static str,
    /// Where to look when `env` is unset: absolute paths, or a bare name
    /// searched on `PATH`.
    pub candidates: &'static [&'static str],
    /// Arguments that make it print its version and exit 0.
    pub version_args: &'static [&'static str],
    /// An older variable that, set to `1`, skips it (kept working).
    pub skip_env: Option<&'static str>,
    /// The command that installs it (Debian, as CI runs).
    pub install: &'static str,
}

pub const REDIS_SERVER: Component = Component {
    name: "redis-server",
    env: "SSED_REDIS_SERVER",
    candidates: &["redis-server"],
    version_args: &["--version"],
    skip_env: Some("SSED_SKIP_REDIS"),
    install: "apt-get install -y redis-server",
};

pub const REDIS_CLI: Component = Component {
    name: "redis-cli",
    env: "SSED_REDIS_CLI",
    candidates: &["redis-cli"],
    version_args: &["--version"],
    skip_env: Some("SSED_SKIP_REDIS"),
    install: "apt-get install -y redis-tools",
};

pub const NGINX: Component = Component {
    name: "nginx",
    env: "SSED_NGINX",
    candidates: &["/usr/sbin/nginx", "/usr/bin/nginx", "nginx"],
    version_args: &["-v"],
    skip_env: Some("SSED_SKIP_NGINX"),
    install: "apt-get install -y nginx-light",
};

pub const CURL: Component = Component {
    name: "curl",
    env: "SSED_CURL",
    candidates: &["curl"],
    version_args: &["--version"],
    skip_env: None,
    install: "apt-get install -y curl",
};

/// Whether a missing component fails the test: `CI` set to anything but
/// `false`/`0`/empty, or `SSED_REQUIRE_COMPONENTS=1`.
pub fn required() -> bool {
    let ci = std::env::var("CI").unwrap_or_default();
    let ci = !ci.is_empty() && ci != "false" && ci != "0";
    ci || std::env::var("SSED_REQUIRE_COMPONENTS").as_deref() == Ok("1")
}

/// The binary of `c`, or why it cannot run. Probed once per process.
pub fn find(c: &Component) -> Result<PathBuf, String> {
    static CACHE: Mutex<Vec<(&'static str, Result<PathBuf, String>)>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, r)) = cache.iter().find(|(n, _)| *n == c.name) {
        return r.clone();
    }
    let r = probe(c);
    cache.push((c.name, r.clone()));
    r
}

fn probe(c: &Component) -> Result<PathBuf, String> {
    if let Some(skip) = c.skip_env {
        if std::env::var(skip).as_deref() == Ok("1") {
            return Err(format!("{skip}=1"));
        }
    }
    let path = match std::env::var_os(c.env) {
        Some(p) => PathBuf::from(p),
        None => c
            .candidates
            .iter()
            .find_map(|n| locate(n))
            .ok_or_else(|| "not installed (not on PATH)".to_string())?,
    };
    let out = Command::new(&path)
        .args(c.version_args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {:?}: {}",
            path.display(),
            c.version_args,
            out.status
        ));
    }
    Ok(path)
}

/// `name` itself when it is a path, else the first `PATH` entry holding it.
fn locate(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).exists().then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The binary of `c` for the calling test, or `None` after the skip line:
/// the test then returns early. Under [`required`] it panics instead.
pub fn require(c: &Component) -> Option<PathBuf> {
    let why = match find(c) {
        Ok(p) => return Some(p),
        Err(why) => why,
    };
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    if required() {
        panic!(
            "{test} needs {} ({why}); install it: {} \
             (CI=true or SSED_REQUIRE_COMPONENTS=1 makes a missing component fail)",
            c.name, c.install
        );
    }
    // Straight to fd 2: libtest captures `eprintln!` of passing tests.
    let line = format!(
        "SKIPPED {test}: needs {} ({why}); install: {}\n",
        c.name, c.install
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
    record(c, test);
    None
}

/// Every skip so far: (component, install command, test).
static SKIPPED: Mutex<Vec<(&str, &str, String)>> = Mutex::new(Vec::new());

fn record(c: &Component, test: String) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: registers a plain extern "C" fn; it only reads a static.
        unsafe { libc::atexit(summary) };
    });
    SKIPPED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((c.name, c.install, test));
}

/// Printed at exit, after libtest's result line.
extern "C" fn summary() {
    let skipped = match SKIPPED.lock() {
        Ok(s) => s,
        Err(e) => e.into_inner(),
    };
    if skipped.is_empty() {
        return;
    }
    let mut out = format!(
        "\nskipped {} test(s): a component they start is missing \
         (CI=true or SSED_REQUIRE_COMPONENTS=1 fails them instead)\n",
        skipped.len()
    );
    let mut names: Vec<(&str, &str)> = skipped.iter().map(|(n, i, _)| (*n, *i)).collect();
    names.sort();
    names.dedup();
    for (name, install) in names {
        let tests: Vec<&str> = skipped
            .iter()
            .filter(|(n, _, _)| *n == name)
            .map(|(_, _, t)| t.as_str())
            .collect();
        out.push_str(&format!(
            "  {name}: {} test(s) skipped; install: {install}\n    {}\n",
            tests.len(),
            tests.join("\n    ")
        ));
    }
    let _ = std::io::stderr().write_all(out.as_bytes());
}
