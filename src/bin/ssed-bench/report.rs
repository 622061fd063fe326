//! One result, printed as a human table or as one JSON object.

use serde_json::{Map, Value};

/// A named figure with its unit (for the table) and a note.
struct Row {
    key: &'static str,
    value: Value,
    unit: &'static str,
}

/// The result of one subcommand. Rows keep their insertion order in the
/// table; JSON keys are the row keys.
pub struct Report {
    mode: &'static str,
    title: String,
    rows: Vec<Row>,
}

impl Report {
    pub fn new(mode: &'static str, title: String) -> Report {
        Report {
            mode,
            title,
            rows: Vec::new(),
        }
    }

    /// Adds a figure; `None` (not measurable here) prints as `-` / null.
    pub fn add(&mut self, key: &'static str, value: impl Into<Value>, unit: &'static str) {
        self.rows.push(Row {
            key,
            value: value.into(),
            unit,
        });
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("mode".into(), Value::from(self.mode));
        for r in &self.rows {
            m.insert(r.key.into(), r.value.clone());
        }
        Value::Object(m)
    }

    pub fn to_table(&self) -> String {
        let width = self.rows.iter().map(|r| r.key.len()).max().unwrap_or(0);
        let mut out = format!("ssed-bench {}: {}\n", self.mode, self.title);
        for r in &self.rows {
            let v = match &r.value {
                Value::Null => "-".to_string(),
                Value::Number(n) => match n.as_f64() {
                    Some(f) if n.is_f64() => format!("{f:.2}"),
                    _ => n.to_string(),
                },
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let line = format!("  {:width$}  {v} {}", r.key, r.unit);
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Rounds for display and JSON: two decimals are plenty for these figures.
pub fn round2(v: Option<f64>) -> Value {
    match v {
        Some(f) if f.is_finite() => Value::from((f * 100.0).round() / 100.0),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_json() {
        let mut r = Report::new("density", "x".into());
        r.add("connections", 5u64, "");
        r.add("rss_per_conn", round2(Some(123.456)), "B");
        r.add("pss_per_conn", round2(None), "B");
        let j = r.to_json();
        assert_eq!(j["mode"], "density");
        assert_eq!(j["connections"], 5);
        assert_eq!(j["rss_per_conn"], 123.46);
        assert!(j["pss_per_conn"].is_null());
        let t = r.to_table();
        assert!(t.contains("connections   5"));
        assert!(t.contains("rss_per_conn  123.46 B"));
        assert!(t.contains("pss_per_conn  - B"));
    }
}
