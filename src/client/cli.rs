//! The `ssed sub` and `ssed pub` commands.
//!
//! This module owns their argument parsing, output formats and exit codes:
//! 0 success, 1 the server or the network failed, 2 bad usage (with a
//! one-line reason on stderr).

use std::io::{self, BufRead, Read, Write};
use std::time::Duration;

use super::http::{self, KeepAlive, Url};
use super::{Client, Error, Event};

const SUB_USAGE: &str = "\
usage: ssed sub URL [--stream S]... [--last-event-id ID] [--json]
                    [--header 'NAME: VALUE']... [--token T] [--max-retries N]

Subscribes to URL (http:// only; no path means /events) and prints every
event until interrupted, reconnecting with Last-Event-ID as needed.

  -s, --stream S         stream to read (repeatable; sent as ?stream=S)
      --last-event-id ID resume after event ID
      --json             one JSON object per line: {\"id\",\"event\",\"data\"}
                         (default: SSE text, id:/event:/data: lines + blank line)
  -H, --header 'N: V'    extra request header (repeatable)
      --token T          send Authorization: Bearer T
      --max-retries N    give up after N consecutive failed attempts
                         (default 0: never give up)
  -h, --help             this help
";

const PUB_USAGE: &str = "\
usage: ssed pub URL --stream S [--event T] [--token T] [DATA | -]

Publishes DATA as one event with POST URL/events?stream=S (a URL whose path
already ends in /events is used as is) and prints the id the server gave it.
With -, every line of stdin is one event, all sent over one keep-alive
connection, and one id is printed per line. Without DATA, all of stdin (one
trailing newline removed) is one event.

  -s, --stream S   stream to publish to (repeatable, at least one)
  -e, --event T    event type (default: message)
      --token T    send Authorization: Bearer T (default: $SSED_PUBLISH_TOKEN)
  -h, --help       this help
";

/// Parsed command line: flags with their values, and positional arguments.
struct Args {
    flags: Vec<(String, Option<String>)>,
    positional: Vec<String>,
}

/// Splits `args` given which flags are switches and which take a value;
/// `aliases` maps short names to long ones.
fn parse_args(
    args: &[String],
    switches: &[&str],
    valued: &[&str],
    aliases: &[(&str, &str)],
) -> Result<Args, String> {
    let mut out = Args {
        flags: Vec::new(),
        positional: Vec::new(),
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            out.positional.extend(iter.by_ref().cloned());
            break;
        }
        // A lone "-" is a positional (stdin), not a flag.
        if !arg.starts_with('-') || arg == "-" {
            out.positional.push(arg.clone());
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let name = aliases
            .iter()
            .find(|(short, _)| *short == name)
            .map_or(name, |(_, long)| *long);
        if switches.contains(&name) {
            if inline.is_some() {
                return Err(format!("{name} takes no value"));
            }
            out.flags.push((name.to_string(), None));
        } else if valued.contains(&name) {
            let value = match inline {
                Some(v) => v,
                None => iter
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))?,
            };
            out.flags.push((name.to_string(), Some(value)));
        } else {
            return Err(format!("unknown flag {arg}"));
        }
    }
    Ok(out)
}

impl Args {
    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| n == name)
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.flags
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| v.clone())
            .collect()
    }

    /// The last value given for `name`.
    fn last(&self, name: &str) -> Option<String> {
        self.all(name).pop()
    }

    fn single_url(&self) -> Result<&str, String> {
        match self.positional.as_slice() {
            [] => Err("missing URL".to_string()),
            [url, ..] => Ok(url),
        }
    }
}

fn usage_error(cmd: &str, why: &str) -> i32 {
    eprintln!("ssed {cmd}: {why} (see ssed {cmd} --help)");
    2
}

/// Runs `ssed sub ARGS...`; returns the process exit code.
pub fn run_sub(args: &[String]) -> i32 {
    let parsed = match parse_args(
        args,
        &["--json", "--help"],
        &[
            "--stream",
            "--last-event-id",
            "--header",
            "--token",
            "--max-retries",
        ],
        &[("-s", "--stream"), ("-H", "--header"), ("-h", "--help")],
    ) {
        Ok(p) => p,
        Err(why) => return usage_error("sub", &why),
    };
    if parsed.has("--help") {
        print!("{SUB_USAGE}");
        return 0;
    }
    let client = match sub_client(&parsed) {
        Ok(c) => c,
        Err(why) => return usage_error("sub", &why),
    };
    #[cfg(feature = "env_logger")]
    let _ = env_logger::try_init();
    let json = parsed.has("--json");
    let stdout = io::stdout();
    for item in client.events() {
        let event = match item {
            Ok(event) => event,
            Err(err) => {
                eprintln!("ssed sub: {err}");
                return 1;
            }
        };
        let text = if json {
            format_json(&event)
        } else {
            format_sse(&event)
        };
        let mut out = stdout.lock();
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            // The reader went away (`ssed sub ... | head`): a normal end.
            return 0;
        }
    }
    0
}

fn sub_client(parsed: &Args) -> Result<Client, String> {
    if parsed.positional.len() > 1 {
        return Err(format!("unexpected argument {}", parsed.positional[1]));
    }
    let url = parsed.single_url()?;
    let mut client = Client::new(url).map_err(|e| e.to_string())?;
    for stream in parsed.all("--stream") {
        if stream.is_empty() {
            return Err("empty stream name".to_string());
        }
        client = client.stream(stream);
    }
    if let Some(id) = parsed.last("--last-event-id") {
        client = client.last_event_id(id);
    }
    for header in parsed.all("--header") {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("header {header:?} is not 'NAME: VALUE'"))?;
        let (name, value) = (name.trim(), value.trim());
        http::check_header(name, value).map_err(|e| e.to_string())?;
        client = client.header(name, value);
    }
    if let Some(token) = parsed.last("--token") {
        let value = format!("Bearer {token}");
        http::check_header("Authorization", &value).map_err(|e| e.to_string())?;
        client = client.header("Authorization", value);
    }
    let retries = match parsed.last("--max-retries") {
        None => 0,
        Some(n) => n
            .parse::<u32>()
            .map_err(|_| format!("--max-retries {n:?} is not a number"))?,
    };
    Ok(client.max_failures(if retries == 0 { None } else { Some(retries) }))
}

/// An event as SSE text, the way ssed frames it (no `event:` line for
/// `message`).
pub fn format_sse(event: &Event) -> String {
    let mut out = String::new();
    if let Some(id) = &event.id {
        out.push_str(&format!("id: {id}\n"));
    }
    if event.event != "message" {
        out.push_str(&format!("event: {}\n", event.event));
    }
    for line in event.data.split('\n') {
        if line.is_empty() {
            out.push_str("data:\n");
        } else {
            out.push_str(&format!("data: {line}\n"));
        }
    }
    out.push('\n');
    out
}

/// An event as one line of JSON: `{"id":..,"event":..,"data":..}` (id is
/// `null` when the stream has none).
pub fn format_json(event: &Event) -> String {
    let id = match &event.id {
        Some(id) => serde_json::Value::from(id.as_str()),
        None => serde_json::Value::Null,
    };
    format!(
        "{{\"id\":{},\"event\":{},\"data\":{}}}\n",
        id,
        serde_json::Value::from(event.event.as_str()),
        serde_json::Value::from(event.data.as_str()),
    )
}

/// Runs `ssed pub ARGS...`; returns the process exit code.
pub fn run_pub(args: &[String]) -> i32 {
    let parsed = match parse_args(
        args,
        &["--help"],
        &["--stream", "--event", "--token"],
        &[("-s", "--stream"), ("-e", "--event"), ("-h", "--help")],
    ) {
        Ok(p) => p,
        Err(why) => return usage_error("pub", &why),
    };
    if parsed.has("--help") {
        print!("{PUB_USAGE}");
        return 0;
    }
    let plan = match pub_plan(&parsed) {
        Ok(p) => p,
        Err(why) => return usage_error("pub", &why),
    };
    match publish_all(&plan) {
        Ok(()) => 0,
        Err(why) => {
            eprintln!("ssed pub: {why}");
            1
        }
    }
}

/// What `ssed pub` was asked to do.
struct PubPlan {
    url: Url,
    target: String,
    headers: Vec<(String, String)>,
    source: Source,
}

enum Source {
    Arg(String),
    Lines,
    WholeStdin,
}

fn pub_plan(parsed: &Args) -> Result<PubPlan, String> {
    let (url, source) = match parsed.positional.as_slice() {
        [] => return Err("missing URL".to_string()),
        [url] => (url, Source::WholeStdin),
        [url, data] if data == "-" => (url, Source::Lines),
        [url, data] => (url, Source::Arg(data.clone())),
        [_, _, extra, ..] => return Err(format!("unexpected argument {extra}")),
    };
    let mut url = Url::parse(url).map_err(|e| e.to_string())?;
    if !url.path.ends_with("/events") {
        url.path = format!("{}/events", url.path.trim_end_matches('/'));
    }
    let streams = parsed.all("--stream");
    if streams.is_empty() {
        return Err("--stream is required".to_string());
    }
    for stream in &streams {
        if stream.is_empty() {
            return Err("empty stream name".to_string());
        }
        url.push_query("stream", stream);
    }
    if let Some(event) = parsed.last("--event") {
        if event.is_empty() {
            return Err("empty event type".to_string());
        }
        url.push_query("event", &event);
    }
    let mut headers = vec![(
        "Content-Type".to_string(),
        "text/plain; charset=utf-8".to_string(),
    )];
    let token = parsed
        .last("--token")
        .or_else(|| std::env::var("SSED_PUBLISH_TOKEN").ok())
        .filter(|t| !t.is_empty());
    if let Some(token) = token {
        let value = format!("Bearer {token}");
        http::check_header("Authorization", &value).map_err(|e| e.to_string())?;
        headers.push(("Authorization".to_string(), value));
    }
    let target = url.target();
    Ok(PubPlan {
        url,
        target,
        headers,
        source,
    })
}

fn publish_all(plan: &PubPlan) -> Result<(), String> {
    let mut conn = KeepAlive::new(plan.url.clone(), Some(Duration::from_secs(30)));
    let stdout = io::stdout();
    let mut emit = |body: &[u8]| -> Result<(), String> {
        let id = publish_one(&mut conn, plan, body)?;
        let mut out = stdout.lock();
        writeln!(out, "{id}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("writing stdout: {e}"))
    };
    match &plan.source {
        Source::Arg(data) => emit(data.as_bytes()),
        Source::WholeStdin => {
            let mut data = Vec::new();
            io::stdin()
                .lock()
                .read_to_end(&mut data)
                .map_err(|e| format!("reading stdin: {e}"))?;
            emit(strip_newline(&data))
        }
        Source::Lines => {
            let mut stdin = io::stdin().lock();
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = stdin
                    .read_until(b'\n', &mut line)
                    .map_err(|e| format!("reading stdin: {e}"))?;
                if n == 0 {
                    return Ok(());
                }
                emit(strip_newline(&line))?;
            }
        }
    }
}

fn strip_newline(data: &[u8]) -> &[u8] {
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    data.strip_suffix(b"\r").unwrap_or(data)
}

/// Sends one event; returns the id the server assigned.
fn publish_one(conn: &mut KeepAlive, plan: &PubPlan, body: &[u8]) -> Result<String, String> {
    let resp = conn
        .request("POST", &plan.target, &plan.headers, body)
        .map_err(|e: Error| e.to_string())?;
    let text = String::from_utf8_lossy(&resp.body);
    if resp.head.status != 200 {
        let reason = serde_json::from_slice::<serde_json::Value>(&resp.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| text.trim().to_string());
        return Err(format!(
            "HTTP {} {}: {reason}",
            resp.head.status, resp.head.reason
        ));
    }
    let reply: serde_json::Value = serde_json::from_slice(&resp.body)
        .map_err(|_| format!("unexpected reply {:?}", text.trim()))?;
    match reply.get("id") {
        Some(serde_json::Value::String(id)) => Ok(id.clone()),
        Some(other) => Ok(other.to_string()),
        None => Err(format!("reply without id: {}", text.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sse_and_json_formats() {
        let e = Event {
            id: Some("7".into()),
            event: "add".into(),
            data: "a\n\nb\"".into(),
            retry: None,
        };
        assert_eq!(
            format_sse(&e),
            "id: 7\nevent: add\ndata: a\ndata:\ndata: b\"\n\n"
        );
        assert_eq!(
            format_json(&e),
            "{\"id\":\"7\",\"event\":\"add\",\"data\":\"a\\n\\nb\\\"\"}\n"
        );
        let m = Event::message("");
        assert_eq!(format_sse(&m), "data:\n\n");
        assert_eq!(
            format_json(&m),
            "{\"id\":null,\"event\":\"message\",\"data\":\"\"}\n"
        );
    }

    #[test]
    fn bad_usage_exits_2() {
        assert_eq!(run_sub(&args(&["--bogus"])), 2);
        assert_eq!(run_sub(&args(&[])), 2);
        assert_eq!(run_sub(&args(&["http://h", "--stream"])), 2);
        assert_eq!(run_sub(&args(&["https://h"])), 2);
        assert_eq!(run_sub(&args(&["http://h", "--max-retries", "x"])), 2);
        assert_eq!(run_sub(&args(&["http://h", "--json=1"])), 2);
        assert_eq!(run_pub(&args(&["http://h", "data"])), 2);
        assert_eq!(run_pub(&args(&["http://h", "-s", "a", "x", "y"])), 2);
        assert_eq!(run_pub(&args(&["ftp://h", "-s", "a", "x"])), 2);
    }

    #[test]
    fn pub_target_is_built_from_url() {
        let p = |list: &[&str]| {
            let parsed = parse_args(
                &args(list),
                &["--help"],
                &["--stream", "--event", "--token"],
                &[("-s", "--stream"), ("-e", "--event")],
            )
            .unwrap();
            pub_plan(&parsed).map(|plan| plan.target)
        };
        assert_eq!(
            p(&["http://h:1", "-s", "a b", "x"]).unwrap(),
            "/events?stream=a%20b"
        );
        assert_eq!(
            p(&["http://h/base/", "--stream=a", "--event", "t", "-"]).unwrap(),
            "/base/events?stream=a&event=t"
        );
        assert_eq!(
            p(&["http://h/x/events?k=1", "-s", "a", "-s", "b"]).unwrap(),
            "/x/events?k=1&stream=a&stream=b"
        );
    }

    #[test]
    fn newline_stripping() {
        assert_eq!(strip_newline(b"a\r\n"), b"a");
        assert_eq!(strip_newline(b"a\n\n"), b"a\n");
        assert_eq!(strip_newline(b"a"), b"a");
    }
}
