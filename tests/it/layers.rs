//! The architecture's import rule, checked on the sources: each top-level
//! module of `src/` uses only modules of lower layers (no cycles, no
//! reaching up), and the broker does no I/O. See docs/ARCHITECTURE.md.

use std::collections::BTreeSet;
use std::path::Path;

/// Layer of each top-level module (lower numbers are lower layers).
const LAYERS: &[(&str, u8)] = &[
    ("id", 0),
    ("config", 1),
    ("frame", 1),
    ("http", 1),
    ("stats", 1),
    ("auth", 1),
    ("bus", 1),
    ("journal", 1),
    ("client", 1),
    ("memory", 1),
    ("event", 2),
    ("access", 2),
    ("presence", 2),
    ("broker", 3),
    ("handler", 4),
    ("api", 5),
    ("apps", 5),
    ("mercure", 5),
    ("router", 6),
    ("error", 6),
    ("reactor", 7),
    ("supervisor", 8),
];

fn layer(m: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == m).map(|(_, l)| *l)
}

/// Source text without comment lines (docs may name anything).
fn code(f: &Path) -> String {
    std::fs::read_to_string(f)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules a source file names through `crate::`.
fn uses(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = src;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let names: Vec<String> = if let Some(inner) = rest.strip_prefix('{') {
            let end = inner.find('}').unwrap_or(inner.len());
            inner[..end]
                .split(',')
                .map(|s| s.trim().split("::").next().unwrap_or("").to_string())
                .collect()
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            vec![rest[..end].to_string()]
        };
        out.extend(names.into_iter().filter(|n| !n.is_empty()));
    }
    out
}

#[test]
fn modules_use_only_lower_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for (m, l) in LAYERS {
        let mut files = Vec::new();
        let dir = root.join(m);
        if dir.is_dir() {
            sources(&dir, &mut files);
        } else {
            files.push(root.join(format!("{m}.rs")));
        }
        for f in files {
            let src = code(&f);
            for u in uses(&src) {
                if u == *m {
                    continue;
                }
                match layer(&u) {
                    Some(ul) if ul < *l => {}
                    Some(ul) => {
                        bad.push(format!("{} (layer {l}) uses {u} (layer {ul})", f.display()))
                    }
                    // Items of the crate root (`crate::Event`) reach up.
                    None => bad.push(format!("{} uses crate::{u}", f.display())),
                }
            }
        }
    }
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn every_module_is_in_a_layer() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        let l = line.trim();
        let Some(name) = l
            .strip_prefix("mod ")
            .or_else(|| l.strip_prefix("pub mod "))
        else {
            continue;
        };
        let name = name.trim_end_matches(';');
        assert!(
            name == "internals" || layer(name).is_some(),
            "module {name} has no layer in tests/it/layers.rs"
        );
    }
}

#[test]
fn broker_does_no_io() {
    no_io("src/broker");
}

/// Token checks, selectors, URL patterns (`urlpattern.rs`, `url.rs`) and
/// draft-08 grants (`draft08.rs`) take bytes and `now`; they never reach
/// for a socket, a file or the clock.
#[test]
fn auth_does_no_io() {
    no_io("src/auth");
}

fn no_io(dir: &str) {
    let mut files = Vec::new();
    sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &mut files);
    for f in files {
        if f.ends_with("tests.rs") {
            continue;
        }
        let src = code(&f);
        for banned in [
            "mio",
            "libc",
            "std::net",
            "std::fs",
            "std::io",
            "Instant",
            "SystemTime",
            "thread",
        ] {
            assert!(!src.contains(banned), "{} mentions {banned}", f.display());
        }
    }
}

/// The reactor's own table: `mod.rs` is the driver (the loop, `Poll`,
/// sockets, the clock, timers, `read`/`writev`); every other file is a
/// part it owns and must not name it. The sans-I/O parts also do no I/O
/// and read no clock, so their unit tests need no socket and no sleep.
const REACTOR_PARTS: &[(&str, bool)] = &[
    // (file under src/reactor/, sans-I/O)
    ("conn.rs", false),
    ("proto.rs", true),
    ("fanout.rs", true),
    ("sweep.rs", true),
    ("timer.rs", true),
    ("peers.rs", true),
    ("listen.rs", false),
    ("durable.rs", false),
    ("durable_off.rs", false),
    ("held.rs", true),
    ("publish.rs", true),
    ("report.rs", true),
    ("bind.rs", false),
    ("bus/mod.rs", false),
    ("bus/off.rs", false),
    ("bus/link.rs", true),
    ("bus/effect.rs", true),
    ("bus/client.rs", false),
    ("bus/machine.rs", false),
    ("bus/tests.rs", false),
];

/// The driver: the one file of the reactor that names `Reactor`.
const REACTOR_DRIVER: &str = "mod.rs";

#[test]
fn reactor_parts_do_not_reach_back_into_the_driver() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/reactor");
    let mut files = Vec::new();
    sources(&root, &mut files);
    for f in files {
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == REACTOR_DRIVER {
            continue;
        }
        let Some(&(_, pure)) = REACTOR_PARTS.iter().find(|(n, _)| *n == rel) else {
            panic!("src/reactor/{rel} is in no row of REACTOR_PARTS in tests/it/layers.rs");
        };
        let src = code(&f);
        assert!(
            !src.contains("Reactor"),
            "src/reactor/{rel} names the driver (Reactor)"
        );
        if !pure {
            continue;
        }
        for banned in [
            "mio",
            "libc",
            "TcpStream",
            "std::fs",
            "Instant",
            "SystemTime",
            "thread",
        ] {
            assert!(!src.contains(banned), "src/reactor/{rel} mentions {banned}");
        }
    }
}
