//! The README as a newcomer runs it: the curl session of "Try it with curl"
//! runs as written (the set-up server's address swapped for a test server's)
//! and every reply and event it promises is checked; the flags table is one
//! table holding every flag `ssed --help` prints; the library examples print
//! the URL they listen on and serve it. The nginx block is run by
//! `trust.rs`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::components::{require, CURL};

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The text of the section under `heading` (to the next `## `).
fn section<'a>(readme: &'a str, heading: &str) -> &'a str {
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// The first fenced block of `lang` in `text`.
fn fenced<'a>(text: &'a str, lang: &str) -> &'a str {
    let open = format!("```{lang}\n");
    let at = text.find(&open).expect("a fenced block") + open.len();
    &text[at..at + text[at..].find("```").expect("its end")]
}

#[test]
fn the_flags_table_is_one_table_with_every_flag_of_help() {
    let readme = readme();
    let flags = section(&readme, "## Flags");
    let lines: Vec<&str> = flags.lines().collect();
    let first = lines.iter().position(|l| l.starts_with('|')).unwrap();
    let last = lines.iter().rposition(|l| l.starts_with('|')).unwrap();
    // A blank (or any other) line between rows splits the table in two.
    for l in &lines[first..=last] {
        assert!(l.starts_with('|'), "the flags table is split by {l:?}");
    }
    let mut in_table = std::collections::BTreeSet::new();
    for row in &lines[first + 2..=last] {
        let cell = row.split('|').nth(1).unwrap();
        for w in cell.split(|c: char| c == '`' || c.is_whitespace()) {
            if w.starts_with("--") {
                in_table.insert(w.to_string());
            }
        }
    }
    let out = Ssed::bare().args(["--help"]).output();
    let help =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let in_help: std::collections::BTreeSet<String> = help
        .lines()
        .filter_map(|l| l.strip_prefix("  --"))
        .map(|l| format!("--{}", l.split_whitespace().next().unwrap()))
        .filter(|f| f != "--help" && f != "--version")
        .collect();
    assert!(in_help.len() > 30, "{help}");
    let missing: Vec<_> = in_help.difference(&in_table).collect();
    assert!(
        missing.is_empty(),
        "flags of --help not in the README table: {missing:?}"
    );
    let stale: Vec<_> = in_table.difference(&in_help).collect();
    assert!(
        stale.is_empty(),
        "README table flags --help lacks: {stale:?}"
    );
}

/// `ssed --help`'s flags: name (`--x`) → (placeholder, default).
fn help_flags() -> std::collections::BTreeMap<String, (String, String)> {
    let out = Ssed::bare().args(["--help"]).output();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut flags = std::collections::BTreeMap::new();
    for l in help.lines().filter(|l| l.starts_with("  --")) {
        let Some(at) = l.find(" [default: ") else {
            continue; // --help, --version
        };
        let rest = &l[at + " [default: ".len()..];
        let default = &rest[..rest.find("] [env: ").expect("an [env: ] after [default: ]")];
        let mut words = l.split_whitespace();
        let name = words.next().unwrap().to_string();
        let value = words
            .next()
            .filter(|w| w.chars().all(|c| c.is_ascii_uppercase()))
            .unwrap_or("");
        flags.insert(name, (value.to_string(), default.to_string()));
    }
    assert!(flags.len() > 30, "{help}");
    flags
}

/// A default as the README writes it (`256 KiB`, `10 s`, `1 h`, `10,000`,
/// `` `--x` + 256 MiB ``, `open-file limit − 64`), in the terms `--help`
/// prints it for a flag whose value is `unit` (`BYTES`, `SECS`, `MS`, `N`).
fn normalise_default(text: &str, unit: &str) -> String {
    let text = text.replace('`', "").replace('−', "-");
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        let digits = w.replace(',', "");
        match digits.parse::<u64>() {
            Ok(n) => {
                let scale = match (words.get(i + 1).copied(), unit) {
                    (Some("KiB"), _) => Some(1 << 10),
                    (Some("MiB"), _) => Some(1 << 20),
                    (Some("GiB"), _) => Some(1 << 30),
                    (Some("s"), "MS") => Some(1000),
                    (Some("s"), _) | (Some("ms"), "MS") => Some(1),
                    (Some("min"), "SECS") => Some(60),
                    (Some("h"), "SECS") => Some(3600),
                    _ => None,
                };
                out.push((n * scale.unwrap_or(1)).to_string());
                i += 1 + usize::from(scale.is_some());
            }
            Err(_) => {
                out.push(w.to_string());
                i += 1;
            }
        }
    }
    out.join(" ")
}

/// Every `(…)` right after a `` `--flag` `` in `cell`: the flag and the
/// default, which is what the parentheses hold before a `, ` (`(16, at
/// most 64)` states 16).
fn flag_defaults(cell: &str) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    let mut rest = cell;
    while let Some(at) = rest.find("`--") {
        let after = &rest[at + 1..];
        let end = after.find('`').expect("a closing backtick");
        let flag = after[..end].to_string();
        rest = &after[end + 1..];
        let default = rest.strip_prefix(" (").map(|d| {
            let mut depth = 0usize;
            let close = d
                .char_indices()
                .find(|&(_, c)| match c {
                    '(' => {
                        depth += 1;
                        false
                    }
                    ')' if depth == 0 => true,
                    ')' => {
                        depth -= 1;
                        false
                    }
                    _ => false,
                })
                .map(|(i, _)| i)
                .expect("a closing parenthesis");
            let inner = &d[..close];
            inner.split(", ").next().unwrap().to_string()
        });
        found.push((flag, default));
    }
    found
}

#[test]
fn the_limits_table_states_every_bound_flag_with_the_default_help_prints() {
    let readme = readme();
    let limits = section(&readme, "## Limits and failure behaviour");
    let help = help_flags();
    let lines: Vec<&str> = limits.lines().collect();
    let first = lines.iter().position(|l| l.starts_with('|')).unwrap();
    let last = lines.iter().rposition(|l| l.starts_with('|')).unwrap();
    for l in &lines[first..=last] {
        assert!(l.starts_with('|'), "the limits table is split by {l:?}");
    }
    // Every flag the section names, in the table or the prose, exists.
    for w in limits.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
        if w.starts_with("--") && w[2..].starts_with(|c: char| c.is_ascii_lowercase()) {
            assert!(
                help.contains_key(w),
                "the limits section names {w}, which --help lacks"
            );
        }
    }
    let mut stated = std::collections::BTreeSet::new();
    let mut named = std::collections::BTreeSet::new();
    for row in &lines[first + 2..=last] {
        let cells: Vec<&str> = row.split(" | ").collect();
        assert!(cells.len() >= 3, "a row of three cells: {row:?}");
        for (flag, default) in flag_defaults(cells[1]) {
            named.insert(flag.clone());
            let Some(default) = default else { continue };
            let (unit, in_help) = help
                .get(&flag)
                .unwrap_or_else(|| panic!("{flag} of the limits table is not in --help"));
            assert_eq!(
                normalise_default(&default, unit),
                normalise_default(in_help, unit),
                "the limits table says {flag} defaults to {default:?}; --help says {in_help:?} (row {row:?})"
            );
            stated.insert(flag);
        }
    }
    let unstated: Vec<_> = named.difference(&stated).collect();
    assert!(
        unstated.is_empty(),
        "flags of the limits table with no `(default)` in any row: {unstated:?}"
    );
    // Every flag with a number for a value bounds something a client can
    // make the server do or hold, except these two, which pace what the
    // server does on its own.
    let not_bounds = ["--heartbeat", "--shutdown-timeout"];
    let missing: Vec<_> = help
        .iter()
        .filter(|(f, (unit, _))| {
            ["BYTES", "SECS", "N"].contains(&unit.as_str()) && !not_bounds.contains(&f.as_str())
        })
        .map(|(f, _)| f)
        .filter(|f| !stated.contains(*f))
        .collect();
    assert!(
        missing.is_empty(),
        "numeric flags with no row (and default) in the limits table: {missing:?}"
    );
}

#[test]
fn the_anonymous_client_bound_is_stated_with_the_defaults_in_force() {
    let readme = readme();
    let limits = section(&readme, "## Limits and failure behaviour");
    let heading = "### What an anonymous client can make the server hold";
    let at = limits
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("the limits section has no {heading:?}"));
    let text = limits[at..].replace('`', "");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let help = help_flags();
    let number = |flag: &str| -> u64 {
        let (unit, d) = &help[flag];
        normalise_default(d, unit).parse().unwrap()
    };
    // --memory-max's default is an expression: `--history-total-bytes + N`.
    let (_, mm) = &help["--memory-max"];
    let (base, plus) = mm.split_once(" + ").expect("--memory-max: FLAG + N");
    let memory_max = number(base) + plus.parse::<u64>().unwrap();
    // Every `--flag N[ unit]` (or `--flag (N…`) the text states is the
    // default in force, and these are stated.
    let mut seen = std::collections::BTreeSet::new();
    let words: Vec<&str> = text.split(' ').collect();
    for (i, w) in words.iter().enumerate() {
        let flag = w
            .trim_start_matches('(')
            .trim_end_matches([',', ')', ':', ';']);
        let Some((unit, _)) = help.get(flag) else {
            continue;
        };
        let Some(next) = words.get(i + 1).map(|n| n.trim_start_matches('(')) else {
            continue;
        };
        let next = next.trim_end_matches([',', ')', ':', ';']);
        if !next.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let unit_word = words
            .get(i + 2)
            .map_or("", |u| u.trim_end_matches([',', ')', ':', ';']));
        let said = normalise_default(&format!("{next} {unit_word}"), unit);
        let said = said.split(' ').next().unwrap().to_string();
        let want = if flag == "--memory-max" {
            memory_max
        } else {
            number(flag)
        };
        assert_eq!(
            said,
            want.to_string(),
            "{heading:?} states {flag} {next} {unit_word}; its default is {want}"
        );
        seen.insert(flag);
    }
    for flag in [
        "--memory-max",
        "--max-connections-per-ip",
        "--max-streams",
        "--history",
    ] {
        assert!(
            seen.contains(flag),
            "{heading:?} should state {flag} with its default"
        );
    }
    for kind in [
        "Connections",
        "Request buffers",
        "Unsent output",
        "Subscriber-only streams",
        "Selector streams",
        "Member streams",
        "History",
        "Kernel memory",
    ] {
        assert!(
            text.contains(&format!("**{kind}")),
            "{heading:?} has no {kind:?} item"
        );
    }
}

/// One `curl` the README session ran: its arguments, the body it printed,
/// the status and its exit code.
#[derive(Debug)]
struct Ran {
    args: String,
    body: String,
    status: u16,
    exit: i32,
}

/// Wraps `curl` so each run is logged to stderr (arguments, body, status,
/// exit code) and still prints its body on stdout for `$(...)`. Streams
/// (`-N`) are cut after 2 s (curl's exit code 28).
const CURL_WRAPPER: &str = r#"
curl() {
  local tmp code rc=0
  tmp=$(mktemp)
  code=$(command "$SSED_CURL_BIN" -sS --max-time 2 -o "$tmp" -w '%{http_code}' "$@") || rc=$?
  { printf '\n@@ curl'; printf ' %s' "$@"; printf '\n'; cat "$tmp"; printf '\n@@ status %s exit %s\n' "$code" "$rc"; } >&2
  cat "$tmp"
  rm -f "$tmp"
}
"#;

fn transcript(log: &str) -> Vec<Ran> {
    log.split("\n@@ curl ")
        .skip(1)
        .map(|e| {
            let (args, rest) = e.split_once('\n').unwrap();
            let (body, tail) = rest.rsplit_once("\n@@ status ").unwrap();
            let mut t = tail.split_whitespace();
            let status = t.next().unwrap().parse().unwrap();
            let exit = t.nth(1).unwrap().parse().unwrap();
            Ran {
                args: args.to_string(),
                body: body.to_string(),
                status,
                exit,
            }
        })
        .collect()
}

#[test]
fn the_curl_examples_run_as_written() {
    let Some(curl) = require(&CURL) else { return };
    let readme = readme();
    let block = fenced(section(&readme, "## Try it with curl"), "sh");
    // Default flags, as `cargo run --release` serves.
    let s = Server::start(&[]);
    let block = block.replace("127.0.0.1:8080", &s.addr.to_string());
    let (sub_line, session) = block
        .split_once('\n')
        .map(|(_, rest)| rest.split_once('\n').unwrap())
        .unwrap();
    assert!(
        sub_line.starts_with("curl -N ") && sub_line.contains("stream=news&stream=alerts"),
        "{sub_line}"
    );
    // Terminal 2: the subscriber, for real (no --max-time: the DELETE at
    // the end of the session ends its stream).
    let sub: Child = Command::new("bash")
        .args(["-c", &format!("exec {sub_line}")])
        .env("PATH", path_with(&curl))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut sub = KillOnDrop(sub);
    assert!(
        wait_until(T, || {
            get(s.addr, "/streams")
                .json()
                .as_array()
                .is_some_and(|a| a.iter().any(|st| st["subscribers"] == 1))
        }),
        "the README's subscriber never subscribed"
    );
    // Terminal 3: everything below it, as one shell session.
    let out = Command::new("bash")
        .args(["-c", &format!("set -u\n{CURL_WRAPPER}\n{session}")])
        .env("SSED_CURL_BIN", &curl)
        .env("PATH", path_with(&curl))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    let ran = transcript(&log);
    let find = |needle: &str| -> &Ran {
        ran.iter()
            .find(|r| r.args.contains(needle))
            .unwrap_or_else(|| panic!("no curl with {needle:?} in {log}"))
    };
    assert_eq!(ran.len(), 14, "{log}");
    for r in &ran {
        let want_exit = if r.args.contains("-N") { 28 } else { 0 };
        assert_eq!(r.exit, want_exit, "{r:?}");
        let want = if r.args.starts_with("-X PUT") {
            201
        } else {
            200
        };
        assert_eq!(r.status, want, "{r:?}");
    }
    // `# -> {"id":"1764057600000000","subscribers":1}`
    let hello = find("--data-binary hello");
    let v: serde_json::Value = serde_json::from_str(&hello.body).unwrap();
    assert_eq!(v["subscribers"], 1, "{hello:?}");
    assert!(v["id"].as_str().is_some_and(|id| id.parse::<u64>().is_ok()));
    // Both resumes: `second`, not `first`, then live (cut by --max-time).
    for r in ran.iter().filter(|r| r.args.starts_with("-N")) {
        assert!(r.body.contains("data: second\n"), "{r:?}");
        assert!(!r.body.contains("data: first"), "{r:?}");
    }
    assert!(find("/streams").body.starts_with('['), "{log}");
    let page = find("/streams?limit=1000&after=news");
    assert!(page.body.starts_with('['), "{page:?}");
    assert!(!page.body.contains("\"news\""), "{page:?}");
    assert!(find("/stats").body.starts_with('{'), "{log}");
    assert!(find("/metrics").body.contains("ssed_"), "{log}");
    // The subscriber saw every publish, then its stream ended with the
    // DELETE (curl exits 0 at the last chunk).
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(st) = sub.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the DELETE did not end the subscriber"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut got = String::new();
    std::io::Read::read_to_string(sub.0.stdout.as_mut().unwrap(), &mut got).unwrap();
    for want in [
        "event: greeting\ndata: hello\n\n",
        "event: tick\ndata: {\"price\":42}\n\n",
        "data: a\n\n",
        "data: b\n\n",
        "event: note\ndata: hi\n\n",
        "data: first\n\n",
        "data: second\n\n",
    ] {
        assert!(got.contains(want), "subscriber lacks {want:?}: {got:?}");
    }
    assert!(got.starts_with("retry: "), "{got:?}");
    assert!(!got.contains("\n\n\n"), "{got:?}");
}

/// `PATH` with the directory of `bin` first.
fn path_with(bin: &std::path::Path) -> std::ffi::OsString {
    let mut dirs = vec![bin.parent().unwrap().to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An example binary `cargo test` built next to this test binary.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: a plain `cargo test` builds the examples",
        p.display()
    );
    p
}

/// Starts an example; returns it and the address of its listening line.
fn start_example(name: &str, args: &[&str]) -> (KillOnDrop, std::net::SocketAddr) {
    let mut child = Command::new(example(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("{name} printed {line:?}, not its URL"))
        .parse()
        .unwrap();
    (KillOnDrop(child), addr)
}

/// `last_event_id=0` is no id the server issued: a `gap` comes first, then
/// every retained event.
fn skip_gap(sub: &mut Sse, stream: &str) {
    let g = sub.next_event(T).expect("the gap");
    assert_eq!(g.event.as_deref(), Some("gap"), "{g:?}");
    let v: serde_json::Value = serde_json::from_str(&g.data()).unwrap();
    assert_eq!(v["streams"][0], stream, "{g:?}");
}

#[test]
fn the_library_examples_print_their_url_and_serve() {
    // examples/server.rs (the README's library example), on port 0.
    let (_server, addr) = start_example("server", &["--listen", "127.0.0.1:0", "--seconds", "30"]);
    let mut sub = Sse::open(addr, "/events?stream=messages&last_event_id=0", "");
    skip_gap(&mut sub, "messages");
    let e = sub.next_event(T).expect("the ping it published");
    assert_eq!(e.data(), "ping");
    // examples/ticker.rs publishes tick 1 as it starts, before anyone can
    // connect: `last_event_id=0` reads it from the history.
    let (_ticker, addr) = start_example(
        "ticker",
        &[
            "--listen",
            "127.0.0.1:0",
            "--ticks",
            "3",
            "--interval-ms",
            "100",
        ],
    );
    let mut sub = Sse::open(addr, "/events?stream=time&last_event_id=0", "");
    skip_gap(&mut sub, "time");
    for n in 1..=3 {
        let e = sub.next_event(T).expect("a tick");
        assert_eq!(e.event.as_deref(), Some("tick"));
        assert!(e.data().starts_with(&format!("tick {n} at ")), "{e:?}");
    }
}
