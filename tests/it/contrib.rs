//! The shipped systemd unit (`contrib/ssed.service`): the options a VPS
//! install relies on are there, once, with the values the README promises.
//! (`.ci/run` also runs `systemd-analyze verify` on it where available.)

use std::collections::HashMap;

/// `[Section] -> key -> values` (a key may repeat).
fn parse(unit: &str) -> HashMap<String, HashMap<String, Vec<String>>> {
    let mut out: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
    let mut section = String::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line:?}"));
        assert!(!section.is_empty(), "{line:?} outside a section");
        out.entry(section.clone())
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

#[test]
fn systemd_unit_has_the_key_options() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/ssed.service"))
            .expect("contrib/ssed.service");
    let u = parse(&text);
    let svc = &u["Service"];
    let one = |k: &str| -> &str {
        let v = svc.get(k).unwrap_or_else(|| panic!("[Service] lacks {k}"));
        assert_eq!(v.len(), 1, "{k} set more than once: {v:?}");
        &v[0]
    };
    assert_eq!(one("ExecStart"), "/usr/local/bin/ssed");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("KillSignal"), "SIGTERM");
    let nofile: u64 = one("LimitNOFILE").parse().expect("LimitNOFILE a number");
    assert!(nofile >= 65536, "LimitNOFILE {nofile}");
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(one(k), v, "{k}");
    }
    // The stop must outlast ssed's own --shutdown-timeout (5 s).
    let stop: u64 = one("TimeoutStopSec").parse().expect("seconds");
    assert!(stop > 5, "TimeoutStopSec {stop}");
    // Configuration comes from an optional environment file (SSED_*).
    assert_eq!(one("EnvironmentFile"), "-/etc/ssed.env");
    assert_eq!(u["Install"]["WantedBy"], ["multi-user.target"]);
}
