//! Why the journal refused an event: the reasons only, shared by the
//! journal and the build without it (`off.rs`), so handlers map them to
//! statuses the same way in both. Must not know HTTP or the journal's files.

/// Why the journal did not take an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Larger than `--journal-bytes` can ever hold alongside the event
    /// before it: refused for good.
    TooLarge {
        /// Its size as a journal record.
        size: u64,
        /// The largest record the budget takes.
        limit: u64,
    },
    /// Over the budget until compaction frees room (asked for): retry.
    Full,
    /// Writing failed (disk full, I/O error); refused until it works again.
    Failed(String),
}

impl Refused {
    /// A message for the client.
    pub fn message(&self) -> String {
        match self {
            Refused::TooLarge { size, limit } => format!(
                "the event is {size} bytes as a journal record, more than --journal-bytes \
                 lets one event take ({limit} bytes); it was not published"
            ),
            Refused::Full => {
                "journal: --journal-bytes reached while compaction catches up; retry shortly".into()
            }
            Refused::Failed(m) => m.clone(),
        }
    }
}
