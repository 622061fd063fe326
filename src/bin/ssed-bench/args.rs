//! Command-line parsing: `ssed-bench SUBCOMMAND [--flag VALUE]... [--json]`.
//!
//! Hand-rolled because the crate's dependency set is fixed (no clap); the
//! grammar is small enough that a flag table per subcommand is clearer than
//! a generic framework anyway.

use std::time::Duration;

use crate::flags::Flags;
pub use crate::url::Url;

/// Usage text printed by `--help` and on argument errors.
pub const USAGE: &str = "\
ssed-bench: load and density measurements for SSE servers (loopback only)

USAGE:
  ssed-bench density --url URL [--url URL]... --n N [--pid PIDS] [--settle-ms MS]
  ssed-bench fanout  --url URL... --publish URL --n N --m M --size B [--rate R]
                     [--max-seconds S] [--pid PIDS]
  ssed-bench churn   --url URL --cycles C [--max-seconds S] [--pid PID]
  ssed-bench idle    --url URL... --n N --seconds S [--pid PIDS]
  ssed-bench publish --url URL --connections N [--pipeline K]
                     [--seconds S | --count C] [--size B] [--pid PID]
                     [--redis-pid PID]

COMMON OPTIONS:
  --json               print one JSON object instead of a table
  --header 'N: V'      sent with every subscription (repeatable), e.g.
                       'Authorization: Bearer TOKEN' for a Mercure hub
  --url URL            repeatable for density, fanout and idle: connection i
                       goes to the (i mod K)-th of K URLs (e.g. several
                       listen ports of one server: each (source address,
                       destination) pair has only ~28k ephemeral ports)
  --pid PID[,PID...]   server processes to measure, figures summed (default:
                       every process listening on the URLs' ports, found via
                       /proc/net/tcp, best effort; for nginx its workers)
  --per-worker K       sockets per worker process (default 9000, at most
                       19000: one process may hold 20,000 files)
  --per-source K       sockets per source address 127.0.0.2, .3, ... (default 1000,
                       ssed's default --max-connections-per-ip)
  --inflight K         unanswered connects per worker at a time (default 256)
  --timeout S          seconds to wait for every subscription (default 120)

URL is http://127.x.y.z:PORT/path?query (or localhost); other hosts are refused.
";

/// Connections per source address: ssed admits at most 1000 per client IP
/// by default (`--max-connections-per-ip`), so a run of 19,000 uses 19
/// addresses and measures the server, not its per-IP limit.
pub const DEFAULT_PER_SOURCE: usize = 1000;

/// Most subscriptions one run opens: a million, plus headroom for runs
/// that probe just past it. Every one is a socket at both ends, ~5-10 KB
/// of kernel memory together.
pub const MAX_N: usize = 2_000_000;

/// Most worker processes one run starts (n / per-worker, rounded up).
pub const MAX_WORKERS: usize = 1024;

/// Options shared by every subcommand that opens many subscriptions.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOpts {
    /// Targets, at least one; connection i goes to `urls[i % len]`.
    pub urls: Vec<Url>,
    /// Extra request header lines (`Name: value`) every subscription sends.
    pub headers: Vec<String>,
    pub n: usize,
    pub per_worker: usize,
    pub per_source: usize,
    pub inflight: usize,
    pub ready_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DensityOpts {
    pub load: LoadOpts,
    /// Server processes to measure (empty: found from the ports).
    pub pids: Vec<u32>,
    /// Pause between "all subscribed" and the memory sample, so the server
    /// has finished whatever it does right after a burst of accepts.
    pub settle: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FanoutOpts {
    pub load: LoadOpts,
    pub pids: Vec<u32>,
    pub publish: Url,
    pub m: u64,
    pub size: usize,
    pub rate: Option<f64>,
    pub max_time: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChurnOpts {
    pub url: Url,
    pub pid: Option<u32>,
    pub cycles: u64,
    pub per_source: usize,
    pub max_time: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IdleOpts {
    pub load: LoadOpts,
    pub pids: Vec<u32>,
    pub seconds: Duration,
}

/// The hidden `worker` subcommand: one child process holding a slice of
/// the subscriptions (see `worker.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerOpts {
    /// Targets; connection `start + i` goes to `urls[(start + i) % len]`.
    pub urls: Vec<Url>,
    /// Extra request header lines.
    pub headers: Vec<String>,
    /// Global index of this worker's first connection (chooses its source
    /// addresses).
    pub start: usize,
    pub count: usize,
    pub per_source: usize,
    pub inflight: usize,
    /// Events each connection should receive before the worker reports on
    /// its own (0: wait for `stop`).
    pub expect: u64,
    pub ready_timeout: Duration,
    /// Hard bound on the worker's life, whatever the parent does.
    pub lifetime: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Density(DensityOpts),
    Fanout(FanoutOpts),
    Churn(ChurnOpts),
    Idle(IdleOpts),
    Publish(crate::publish::PublishOpts),
    Worker(WorkerOpts),
    Help,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub command: Command,
    pub json: bool,
}

/// Flags that every load-generating subcommand accepts.
const LOAD_FLAGS: &[&str] = &[
    "url",
    "header",
    "n",
    "pid",
    "per-worker",
    "per-source",
    "inflight",
    "timeout",
];

fn load(f: &Flags) -> Result<LoadOpts, String> {
    let n: usize = f.num("n", None)?;
    if n == 0 || n > MAX_N {
        return Err(format!("--n must be in 1..={MAX_N}"));
    }
    let per_worker: usize = f.num("per-worker", Some(9000))?;
    let per_source: usize = f.num("per-source", Some(DEFAULT_PER_SOURCE))?;
    let inflight: usize = f.num("inflight", Some(256))?;
    // A worker also holds a few pipes and the poll fd; 19,000 leaves
    // room under the 20,000 open-file limit.
    if per_worker == 0 || per_worker > 19_000 {
        return Err("--per-worker must be in 1..=19000".into());
    }
    if per_source == 0 || inflight == 0 {
        return Err("--per-source and --inflight must be at least 1".into());
    }
    if n.div_ceil(per_worker) > MAX_WORKERS {
        return Err(format!(
            "--n {n} at --per-worker {per_worker} needs more than {MAX_WORKERS} worker processes"
        ));
    }
    Ok(LoadOpts {
        urls: f.urls()?,
        headers: f.headers()?,
        n,
        per_worker,
        per_source,
        inflight,
        ready_timeout: f.secs("timeout", 120.0)?,
    })
}

fn with(extra: &[&'static str]) -> Vec<&'static str> {
    LOAD_FLAGS.iter().chain(extra).copied().collect()
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Args, String> {
    let Some((sub, rest)) = args.split_first() else {
        return Ok(Args {
            command: Command::Help,
            json: false,
        });
    };
    let (command, json) = match sub.as_str() {
        "help" | "--help" | "-h" => (Command::Help, false),
        "density" => {
            let f = Flags::parse(rest, &with(&["settle-ms"]))?;
            let cmd = Command::Density(DensityOpts {
                load: load(&f)?,
                pids: f.pids()?,
                settle: Duration::from_millis(f.num("settle-ms", Some(1000))?),
            });
            (cmd, f.json)
        }
        "fanout" => {
            let f = Flags::parse(
                rest,
                &with(&["publish", "m", "size", "rate", "max-seconds"]),
            )?;
            let rate: Option<f64> = f.opt_num("rate")?;
            if matches!(rate, Some(r) if r <= 0.0 || r.is_nan()) {
                return Err("--rate must be positive".into());
            }
            let cmd = Command::Fanout(FanoutOpts {
                load: load(&f)?,
                pids: f.pids()?,
                publish: f.url("publish")?,
                m: f.num("m", None)?,
                size: f.num("size", Some(64))?,
                rate,
                max_time: f.secs("max-seconds", 120.0)?,
            });
            (cmd, f.json)
        }
        "churn" => {
            let f = Flags::parse(rest, &["url", "cycles", "pid", "per-source", "max-seconds"])?;
            let cmd = Command::Churn(ChurnOpts {
                url: f.url("url")?,
                pid: f.opt_num("pid")?,
                cycles: f.num("cycles", None)?,
                per_source: f.num("per-source", Some(DEFAULT_PER_SOURCE))?.max(1),
                max_time: f.secs("max-seconds", 120.0)?,
            });
            (cmd, f.json)
        }
        "idle" => {
            let f = Flags::parse(rest, &with(&["seconds"]))?;
            let cmd = Command::Idle(IdleOpts {
                load: load(&f)?,
                pids: f.pids()?,
                seconds: f.secs("seconds", 10.0)?,
            });
            (cmd, f.json)
        }
        "publish" => {
            let (o, json) = crate::publish::parse(rest)?;
            (Command::Publish(o), json)
        }
        "worker" => {
            let f = Flags::parse(
                rest,
                &[
                    "url",
                    "header",
                    "start",
                    "count",
                    "per-source",
                    "inflight",
                    "expect",
                    "timeout",
                    "lifetime",
                ],
            )?;
            let cmd = Command::Worker(WorkerOpts {
                urls: f.urls()?,
                headers: f.headers()?,
                start: f.num("start", None)?,
                count: f.num("count", None)?,
                per_source: f.num("per-source", Some(DEFAULT_PER_SOURCE))?.max(1),
                inflight: f.num("inflight", Some(256))?.max(1),
                expect: f.num("expect", Some(0))?,
                ready_timeout: f.secs("timeout", 120.0)?,
                lifetime: f.secs("lifetime", 600.0)?,
            });
            (cmd, f.json)
        }
        other => return Err(format!("unknown subcommand {other:?}")),
    };
    Ok(Args { command, json })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::MAX_URLS;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn url_parsing() {
        let u = Url::parse("http://127.0.0.1:8080/events?stream=bench").unwrap();
        assert_eq!(u.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(u.host_header, "127.0.0.1:8080");
        assert_eq!(u.path_query, "/events?stream=bench");

        let u = Url::parse("http://localhost?x=1").unwrap();
        assert_eq!(u.addr, "127.0.0.1:80".parse().unwrap());
        assert_eq!(u.path_query, "/?x=1");

        let u = Url::parse("http://127.9.8.7:1").unwrap();
        assert_eq!(u.path_query, "/");

        assert!(Url::parse("https://127.0.0.1/").is_err());
        assert!(Url::parse("http://10.0.0.1:80/").is_err());
        assert!(Url::parse("http://example.com/").is_err());
        assert!(Url::parse("http://127.0.0.1:99999/").is_err());
    }

    #[test]
    fn density_defaults_and_values() {
        let a = parse(&argv(
            "density --url http://127.0.0.1:1/events?stream=a --n 19000 --json",
        ))
        .unwrap();
        assert!(a.json);
        let Command::Density(d) = a.command else {
            panic!("wrong command")
        };
        assert_eq!(d.load.n, 19000);
        assert_eq!(d.load.per_worker, 9000);
        assert_eq!(d.load.per_source, 1000);
        assert!(d.pids.is_empty());
        assert_eq!(d.load.urls.len(), 1);
        assert_eq!(d.settle, Duration::from_millis(1000));

        let a = parse(&argv(
            "density --url=http://127.0.0.1:1/ --n 5 --pid 42 --per-worker 2",
        ))
        .unwrap();
        assert!(!a.json);
        let Command::Density(d) = a.command else {
            panic!("wrong command")
        };
        assert_eq!(d.pids, vec![42]);
        assert_eq!(d.load.per_worker, 2);
    }

    #[test]
    fn fanout_parsing() {
        let a = parse(&argv(
            "fanout --url http://127.0.0.1:1/e --publish http://127.0.0.1:1/p --n 10 --m 3 --size 100 --rate 50",
        ))
        .unwrap();
        let Command::Fanout(f) = a.command else {
            panic!("wrong command")
        };
        assert_eq!((f.load.n, f.m, f.size), (10, 3, 100));
        assert_eq!(f.rate, Some(50.0));
        assert_eq!(f.publish.path_query, "/p");
        assert_eq!(f.max_time, Duration::from_secs(120));
    }

    #[test]
    fn errors() {
        assert!(parse(&argv("density --url http://127.0.0.1:1/")).is_err()); // no --n
        assert!(parse(&argv("density --url http://127.0.0.1:1/ --n 0")).is_err());
        assert!(parse(&argv("density --url http://127.0.0.1:1/ --n x")).is_err());
        assert!(parse(&argv("density --url http://127.0.0.1:1/ --n 1 --bogus 1")).is_err());
        assert!(parse(&argv("density --url http://127.0.0.1:1/ --n 1 --n 2")).is_err());
        assert!(parse(&argv("density --url http://127.0.0.1:1/ --n")).is_err());
        assert!(parse(&argv("churn --url http://127.0.0.1:1/")).is_err());
        assert!(parse(&argv(
            "fanout --url http://127.0.0.1:1/ --publish http://127.0.0.1:1/ --n 1 --m 1 --rate 0"
        ))
        .is_err());
        assert!(parse(&argv("frobnicate")).is_err());
        assert_eq!(parse(&[]).unwrap().command, Command::Help);
    }

    #[test]
    fn several_urls_and_pids() {
        let a = parse(&argv(
            "density --url http://127.0.0.1:1/e --url=http://127.0.0.1:2/e --n 200 --pid 10,11,12",
        ))
        .unwrap();
        let Command::Density(d) = a.command else {
            panic!("wrong command")
        };
        let ports: Vec<u16> = d.load.urls.iter().map(|u| u.addr.port()).collect();
        assert_eq!(ports, [1, 2]);
        assert_eq!(d.pids, [10, 11, 12]);

        let a = parse(&argv(
            "worker --url http://127.0.0.1:1/ --url http://127.0.0.1:2/ --url http://127.0.0.1:3/ --start 0 --count 9",
        ))
        .unwrap();
        let Command::Worker(w) = a.command else {
            panic!("wrong command")
        };
        assert_eq!(w.urls.len(), 3);

        // Every URL is checked, not just the first.
        assert!(parse(&argv(
            "density --url http://127.0.0.1:1/ --url http://10.0.0.1:2/ --n 1"
        ))
        .is_err());
        // Single-target modes still take one URL.
        assert!(parse(&argv(
            "churn --url http://127.0.0.1:1/ --url http://127.0.0.1:2/ --cycles 1"
        ))
        .unwrap_err()
        .contains("twice"));
        for bad in ["--pid 1,x", "--pid 0", "--pid ,", "--pid 1,,2", "--pid -3"] {
            assert!(
                parse(&argv(&format!(
                    "density --url http://127.0.0.1:1/ --n 1 {bad}"
                )))
                .is_err(),
                "{bad}"
            );
        }
        let many: String = (0..=MAX_URLS)
            .map(|i| format!(" --url http://127.0.0.1:{}/", i + 1))
            .collect();
        let e = parse(&argv(&format!("idle --n 1{many}"))).unwrap_err();
        assert!(e.contains("at most"), "{e}");
    }

    #[test]
    fn bounds_for_a_million() {
        let ok = |s: &str| parse(&argv(s)).map(|_| ());
        ok("density --url http://127.0.0.1:1/ --n 1000000 --per-worker 19000").unwrap();
        ok("density --url http://127.0.0.1:1/ --n 2000000 --per-worker 19000").unwrap();
        let e = ok("density --url http://127.0.0.1:1/ --n 2000001 --per-worker 19000").unwrap_err();
        assert!(e.contains("--n"), "{e}");
        // 1,000,000 at 900 per process is 1,112 processes: too many.
        let e = ok("density --url http://127.0.0.1:1/ --n 1000000 --per-worker 900").unwrap_err();
        assert!(e.contains("worker processes"), "{e}");
        ok("density --url http://127.0.0.1:1/ --n 1000000 --per-worker 977").unwrap();
        assert!(ok("density --url http://127.0.0.1:1/ --n 10 --per-worker 19001").is_err());
        assert!(ok("density --url http://127.0.0.1:1/ --n 10 --per-worker 0").is_err());
        assert!(ok("density --url http://127.0.0.1:1/ --n 10 --per-source 0").is_err());
        assert!(ok("density --url http://127.0.0.1:1/ --n 10 --inflight 0").is_err());
        assert!(ok("density --url http://127.0.0.1:1/ --n 10 --timeout 86401").is_err());
        assert!(ok("density --url http://127.0.0.1:1/ --n 10 --timeout -1").is_err());
    }

    #[test]
    fn churn_idle_worker() {
        let a = parse(&argv(
            "churn --url http://127.0.0.1:1/ --cycles 200 --max-seconds 5",
        ))
        .unwrap();
        let Command::Churn(c) = a.command else {
            panic!("wrong command")
        };
        assert_eq!(c.cycles, 200);
        assert_eq!(c.max_time, Duration::from_secs(5));

        let a = parse(&argv("idle --url http://127.0.0.1:1/ --n 20 --seconds 1.5")).unwrap();
        let Command::Idle(i) = a.command else {
            panic!("wrong command")
        };
        assert_eq!(i.seconds, Duration::from_millis(1500));

        let a = parse(&argv(
            "worker --url http://127.0.0.1:1/ --start 9000 --count 10 --expect 7",
        ))
        .unwrap();
        let Command::Worker(w) = a.command else {
            panic!("wrong command")
        };
        assert_eq!((w.start, w.count, w.expect), (9000, 10, 7));
    }

    #[test]
    fn headers_repeat_and_are_checked() {
        let args = |extra: &[&str]| {
            let mut v = argv("density --url http://127.0.0.1:1/ --n 2");
            v.extend(extra.iter().map(|s| s.to_string()));
            parse(&v)
        };
        let a = args(&["--header", "Authorization: Bearer x.y.z", "--header=X-A: 1"]).unwrap();
        let Command::Density(d) = a.command else {
            panic!("wrong command")
        };
        assert_eq!(d.load.headers, ["Authorization: Bearer x.y.z", "X-A: 1"]);
        for bad in [
            "no colon",
            ": empty name",
            "A: b\r\nInjected: c",
            "Bad Name: v",
        ] {
            let e = args(&["--header", bad]).unwrap_err();
            assert!(e.contains("--header"), "{bad:?}: {e}");
        }
        let a = parse(&argv(
            "worker --url http://127.0.0.1:1/ --start 0 --count 1",
        ))
        .unwrap();
        let Command::Worker(w) = a.command else {
            panic!("wrong command")
        };
        assert!(w.headers.is_empty());
    }
}
