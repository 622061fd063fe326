//! The command-line grammar every `ssed-bench` subcommand shares:
//! `--name value`, `--name=value`, `--json`, a known-flag list per
//! subcommand, a flag given twice refused unless it may repeat (`--url`),
//! and typed readers for the values. The subcommands' own options and
//! bounds live with them (args.rs, publish.rs).

use std::collections::HashMap;
use std::time::Duration;

use crate::url::Url;

/// Most target URLs one run takes: each is one more listener a worker
/// process round-robins over, not a reason for thousands.
pub const MAX_URLS: usize = 64;

/// `--name value` pairs and `--switch`es of one command line.
pub struct Flags {
    values: HashMap<String, String>,
    /// Every value of a flag that may repeat (`--url`), in order.
    repeated: HashMap<String, Vec<String>>,
    pub json: bool,
}

/// Flags that may be given more than once.
const REPEATABLE: &[&str] = &["url", "header"];

impl Flags {
    pub fn parse(args: &[String], known: &[&str]) -> Result<Flags, String> {
        let mut values = HashMap::new();
        let mut repeated: HashMap<String, Vec<String>> = HashMap::new();
        let mut json = false;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let name = arg
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {arg:?}"))?;
            if name == "json" {
                json = true;
                continue;
            }
            // Accept `--name=value` as well as `--name value`.
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => {
                    let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                    (name.to_string(), v.clone())
                }
            };
            if !known.contains(&name.as_str()) {
                return Err(format!("unknown option --{name}"));
            }
            if REPEATABLE.contains(&name.as_str()) {
                repeated
                    .entry(name.clone())
                    .or_default()
                    .push(value.clone());
            }
            if values.insert(name.clone(), value).is_some() && !REPEATABLE.contains(&name.as_str())
            {
                return Err(format!("--{name} given twice"));
            }
        }
        Ok(Flags {
            values,
            repeated,
            json,
        })
    }

    /// Every `--header "Name: value"`, each sent with every subscription
    /// (a bearer token, say): one line, a name before the colon, at most
    /// 16 KiB, at most [`MAX_URLS`] of them.
    pub fn headers(&self) -> Result<Vec<String>, String> {
        let all = self
            .repeated
            .get("header")
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if all.len() > MAX_URLS {
            return Err(format!("--header: at most {MAX_URLS}"));
        }
        for h in all {
            let ok = h.len() <= 16 << 10
                && !h.contains(['\r', '\n'])
                && h.split_once(':').is_some_and(|(n, _)| {
                    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                return Err(format!(
                    "--header {h:?}: expected \"Name: value\" on one line"
                ));
            }
        }
        Ok(all.to_vec())
    }

    /// Every `--url`, at least one, at most `MAX_URLS`.
    pub fn urls(&self) -> Result<Vec<Url>, String> {
        let all = self.repeated.get("url").map(Vec::as_slice).unwrap_or(&[]);
        if all.is_empty() {
            return Err("--url is required".into());
        }
        if all.len() > MAX_URLS {
            return Err(format!("--url: at most {MAX_URLS} targets"));
        }
        all.iter().map(|u| Url::parse(u)).collect()
    }

    /// `--pid PID[,PID...]`: the server processes to measure.
    pub fn pids(&self) -> Result<Vec<u32>, String> {
        let Some(v) = self.values.get("pid") else {
            return Ok(Vec::new());
        };
        let pids = v
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| format!("--pid: cannot parse {p:?}"))
            })
            .collect::<Result<Vec<u32>, String>>()?;
        Ok(pids)
    }

    pub fn str(&self, name: &str) -> Result<&str, String> {
        self.values
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("--{name} is required"))
    }

    /// A single URL: a repeatable flag given twice is an error here.
    pub fn url(&self, name: &str) -> Result<Url, String> {
        if self.repeated.get(name).is_some_and(|v| v.len() > 1) {
            return Err(format!("--{name} given twice"));
        }
        Url::parse(self.str(name)?)
    }

    pub fn num<T: std::str::FromStr>(&self, name: &str, default: Option<T>) -> Result<T, String> {
        match self.values.get(name) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: cannot parse {v:?}")),
            None => default.ok_or_else(|| format!("--{name} is required")),
        }
    }

    pub fn opt_num<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        self.values
            .get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("--{name}: cannot parse {v:?}"))
            })
            .transpose()
    }

    pub fn secs(&self, name: &str, default: f64) -> Result<Duration, String> {
        let s: f64 = self.num(name, Some(default))?;
        if !(0.0..=86_400.0).contains(&s) {
            return Err(format!("--{name}: {s} is out of range"));
        }
        Ok(Duration::from_secs_f64(s))
    }
}
