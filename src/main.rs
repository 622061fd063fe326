//! The `ssed` binary: parse flags, run the server (or the `sub`/`pub`
//! client commands), map errors to exit codes. Only this file decides
//! exit codes (`exit_code`): the library returns typed errors.

use std::io::Write;

use ssed::{Command, Config, Error, Server};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        #[cfg(feature = "cli")]
        Some("sub") => ssed::client::cli::run_sub(&args[1..]),
        #[cfg(feature = "cli")]
        Some("pub") => ssed::client::cli::run_pub(&args[1..]),
        #[cfg(not(feature = "cli"))]
        Some(c @ ("sub" | "pub")) => {
            eprintln!("ssed: `ssed {c}` needs the `cli` feature, which this ssed was built without (rebuild with: cargo build --release --features cli)");
            2
        }
        _ => serve(&args),
    };
    std::process::exit(code);
}

fn serve(args: &[String]) -> i32 {
    let cfg = match Config::from_args(args, |k| std::env::var(k).ok()) {
        Ok(Command::Serve(cfg)) => cfg,
        Ok(Command::Help) => {
            print!("{}", ssed::help());
            return 0;
        }
        Ok(Command::Version) => {
            println!("ssed {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Err(e) => return fail(&Error::Config(e)),
    };
    init_logging();
    // A bug must not leave a hung half-server behind: log it and exit
    // non-zero so a supervisor restarts us; clients resume by Last-Event-ID.
    std::panic::set_hook(Box::new(|info| {
        log::error!("internal error, exiting: {info}");
        eprintln!("ssed: internal error, exiting: {info}");
        std::process::exit(70);
    }));
    if cfg.workers > 0 {
        return supervise(&cfg, args);
    }
    let server = match Server::bind(*cfg) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let mut out = std::io::stdout().lock();
    for a in server.local_addrs() {
        let _ = writeln!(out, "listening on http://{a}");
    }
    let _ = out.flush();
    drop(out);
    match server.run() {
        Ok(()) => 0,
        Err(e) => fail(&e),
    }
}

/// Reports `e` and returns the exit code it means.
fn fail(e: &Error) -> i32 {
    eprintln!("ssed: {e}");
    exit_code(e)
}

/// 2 when the operator asked for something that cannot be done (a flag,
/// a file, a URL, a data directory to fix), 1 when the system failed.
fn exit_code(e: &Error) -> i32 {
    match e {
        Error::Config(_)
        | Error::Users(_)
        | Error::RedisUrl(_)
        | Error::RedisHost(_)
        | Error::Access(_)
        | Error::JournalWithRedis
        | Error::Journal { .. } => 2,
        Error::Listen { .. } | Error::Io(_) => 1,
    }
}

#[cfg(all(unix, feature = "workers"))]
fn supervise(cfg: &Config, args: &[String]) -> i32 {
    match ssed::supervise(cfg, args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ssed: {e}");
            match e {
                // A worker's own code (2 for a bad config), so the
                // supervisor fails as a single process would.
                ssed::SuperviseError::Startup { status, .. } => {
                    status.code().filter(|c| *c != 0).unwrap_or(1)
                }
                _ => 1,
            }
        }
    }
}

// Without the feature `Config::check_features` refuses `--workers` first.
#[cfg(not(all(unix, feature = "workers")))]
fn supervise(_cfg: &Config, _args: &[String]) -> i32 {
    eprintln!("ssed: --workers needs a Unix system and the `workers` feature");
    2
}

#[cfg(feature = "env_logger")]
fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
}

/// Without `env_logger` (a minimal build): `LEVEL target: message` lines on
/// stderr at the level `RUST_LOG` names (its last `=level`, so `ssed=debug`
/// works too), default `warn`.
#[cfg(not(feature = "env_logger"))]
fn init_logging() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::max_level()
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                eprintln!("{} {}: {}", r.level(), r.target(), r.args());
            }
        }
        fn flush(&self) {}
    }
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.rsplit('=').next().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(log::LevelFilter::Warn);
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(level);
    }
}
