//! Exit codes of the real binary, one case per kind of `ssed::Error`:
//! 2 when the operator must fix a flag, a file, a URL or a directory;
//! 1 when the system failed (a port taken). `main` alone decides them.

use crate::common::Ssed;

/// Runs ssed with exactly `args`; returns its exit code and standard error.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Ssed::bare().args(args).output();
    assert!(out.stdout.is_empty(), "it listened: {out:?}");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_kind_of_error_has_its_exit_code_and_one_line() {
    let dir = std::env::temp_dir().join(format!("ssed-exits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let file = file.to_str().unwrap();
    let missing = dir.join("no-such-users-file");
    let missing = missing.to_str().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    // A flag of a feature not built in is a config error (exit 2 too).
    let needs = |feature: &str, built: bool, needle: &'static str| {
        if built {
            needle.to_string()
        } else {
            format!("needs the `{feature}` feature")
        }
    };
    let users = needs("apps", cfg!(feature = "apps"), "cannot read");
    let url = needs("redis", cfg!(feature = "redis"), "bad Redis URL");
    let both = match (cfg!(feature = "redis"), cfg!(feature = "journal")) {
        (true, true) => "--data-dir and --redis cannot be used together".to_string(),
        (false, _) => needs("redis", false, ""),
        (true, false) => needs("journal", false, ""),
    };
    let journal = needs("journal", cfg!(feature = "journal"), "plain-file");
    let cases: [(&str, &[&str], i32, &str); 6] = [
        ("config", &["--nope"], 2, "unknown flag --nope"),
        ("users", &["--users", missing], 2, &users),
        ("redis url", &["--redis", "rediss://h:1"], 2, &url),
        (
            "journal with redis",
            &["--data-dir", file, "--redis", "redis://127.0.0.1:1"],
            2,
            &both,
        ),
        ("journal", &["--data-dir", file], 2, &journal),
        ("listen", &["--listen", &taken], 1, "cannot listen on"),
    ];
    for (name, args, code, needle) in cases {
        let listen: &[&str] = if name == "listen" {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let (got, err) = run(&[listen, args].concat());
        assert_eq!(got, Some(code), "{name}: {err}");
        assert!(
            err.starts_with("ssed: ") && err.contains(needle),
            "{name}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
