//! The component harness (`components`) on a machine that lacks a
//! component: this test binary runs one real Redis- or nginx-backed test
//! again as a child, with the component's path pointed at a file that does
//! not exist, and checks the child's exit status and output: one skip line
//! and a summary without `CI`, a failure with `CI=true` or
//! `SSED_REQUIRE_COMPONENTS=1`.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::components::{find, NGINX, REDIS_SERVER};

const WORKERS_TEST: &str = "workers::a_publish_on_either_worker_reaches_subscribers_on_both";
const REDIS_TEST: &str = "redis::publish_on_a_reaches_b_exactly_and_ids_increase_across_nodes";
const NGINX_TEST: &str = "trust::through_nginx_with_trusted_proxy_the_client_address_is_used";

/// Runs `test` alone in a child of this binary with `env` set (and the
/// variables that change the outcome cleared first); its exit success and
/// its stdout and stderr, in order, in one string.
fn run_alone(test: &str, env: &[(&str, &str)]) -> (bool, String) {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let out_path = std::env::temp_dir().join(format!(
        "ssed-skips-{}-{}.out",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--test-threads=1"]);
    for k in [
        "CI",
        "SSED_REQUIRE_COMPONENTS",
        "SSED_SKIP_REDIS",
        "SSED_SKIP_NGINX",
        "SSED_REDIS_SERVER",
        "SSED_REDIS_CLI",
        "SSED_NGINX",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let status = cmd
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .expect("run the test binary");
    let text = std::fs::read_to_string(&out_path).unwrap();
    let _ = std::fs::remove_file(&out_path);
    (status.success(), text)
}

/// Asserts `text` is a skipped run of `test`: exactly one skip line naming
/// `component` and `install`, the test passing, and the summary after
/// libtest's result line.
fn assert_skipped(text: &str, test: &str, component: &str, install: &str) {
    // The line may follow libtest's `test ... ` on a shared terminal.
    assert_eq!(text.matches("SKIPPED ").count(), 1, "{text}");
    let at = text.find("SKIPPED ").unwrap();
    let line = text[at..].lines().next().unwrap();
    assert!(
        line.starts_with(&format!("SKIPPED {test}: needs {component} (")),
        "{line}"
    );
    assert!(line.ends_with(&format!("; install: {install}")), "{line}");
    assert!(text.contains(&format!("test {test} ... ")), "{text}");
    assert!(text.contains("test result: ok. 1 passed"), "{text}");
    let result = text.find("test result: ok. 1 passed").expect(text);
    let summary = text
        .find("skipped 1 test(s): a component they start is missing")
        .unwrap_or_else(|| panic!("no summary: {text}"));
    assert!(result < summary, "summary before the result line: {text}");
    assert!(
        text[summary..].contains(&format!(
            "  {component}: 1 test(s) skipped; install: {install}\n    {test}\n"
        )),
        "{text}"
    );
}

#[test]
fn a_missing_redis_server_skips_the_test_with_one_line_and_a_summary() {
    let (ok, text) = run_alone(
        WORKERS_TEST,
        &[("SSED_REDIS_SERVER", "/nonexistent/redis-server")],
    );
    assert!(ok, "{text}");
    assert_skipped(
        &text,
        WORKERS_TEST,
        "redis-server",
        "apt-get install -y redis-server",
    );
    assert!(text.contains("/nonexistent/redis-server"), "{text}");
}

#[test]
fn a_missing_redis_cli_skips_the_redis_tests() {
    let (ok, text) = run_alone(REDIS_TEST, &[("SSED_REDIS_CLI", "/nonexistent/redis-cli")]);
    assert!(ok, "{text}");
    // On a machine without redis-server that is what the skip names.
    let (component, install) = match find(&REDIS_SERVER) {
        Ok(_) => ("redis-cli", "apt-get install -y redis-tools"),
        Err(_) => ("redis-server", "apt-get install -y redis-server"),
    };
    assert_skipped(&text, REDIS_TEST, component, install);
}

#[test]
fn a_missing_nginx_skips_the_proxy_tests() {
    let (ok, text) = run_alone(NGINX_TEST, &[("SSED_NGINX", "/nonexistent/nginx")]);
    assert!(ok, "{text}");
    assert_skipped(&text, NGINX_TEST, "nginx", "apt-get install -y nginx-light");
}

#[test]
fn ssed_skip_redis_still_skips() {
    let (ok, text) = run_alone(WORKERS_TEST, &[("SSED_SKIP_REDIS", "1")]);
    assert!(ok, "{text}");
    assert_skipped(
        &text,
        WORKERS_TEST,
        "redis-server",
        "apt-get install -y redis-server",
    );
    assert!(text.contains("(SSED_SKIP_REDIS=1)"), "{text}");
}

#[test]
fn in_ci_a_missing_component_fails_the_test() {
    for require in [("CI", "true"), ("SSED_REQUIRE_COMPONENTS", "1")] {
        for (test, env) in [
            (
                WORKERS_TEST,
                ("SSED_REDIS_SERVER", "/nonexistent/redis-server"),
            ),
            (WORKERS_TEST, ("SSED_SKIP_REDIS", "1")),
            (NGINX_TEST, ("SSED_NGINX", "/nonexistent/nginx")),
        ] {
            let (ok, text) = run_alone(test, &[env, require]);
            assert!(!ok, "{require:?} {env:?}: {text}");
            assert!(text.contains(&format!("test {test} ... FAILED")), "{text}");
            assert!(text.contains("needs "), "{text}");
            assert!(!text.contains("SKIPPED "), "{text}");
            assert!(!text.contains("skipped 1 test(s)"), "{text}");
        }
    }
}

#[test]
fn with_the_component_present_nothing_is_skipped() {
    // CI=false is not CI: the variable's value counts, not its presence.
    // (A quick, deterministic nginx test: the point is the harness.)
    let (ok, text) = run_alone(NGINX_TEST, &[("CI", "false")]);
    if find(&NGINX).is_err() {
        // This machine has no nginx: the run above was a skip.
        assert!(ok && text.contains("SKIPPED "), "{text}");
        return;
    }
    assert!(ok, "{text}");
    assert!(!text.contains("SKIPPED "), "{text}");
    assert!(!text.contains("skipped 1 test(s)"), "{text}");
}
