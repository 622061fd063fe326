//! The `--users` file of the MongooseIM app: `user@domain:password` per
//! line, read once at start. Anything unusable (unreadable, not UTF-8, a
//! line that is not `user@domain:password`, a duplicate, an empty
//! password) is an error naming the path and the line; the binary exits 2
//! rather than serve an `/api` that silently locks users out. Pure apart
//! from reading the file; it knows nothing of requests.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::{bare_jid, MAX_USERS};

/// The users of a `--users` file: bare JID (lowercased) → password.
#[derive(Debug, Default)]
pub struct Users {
    pub(super) entries: Vec<(Box<str>, Box<str>)>,
}

impl Users {
    /// Number of users.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Why a `--users` file was refused.
#[derive(Debug)]
pub enum UsersErrorKind {
    /// Missing or unreadable.
    Read(std::io::Error),
    /// Not UTF-8.
    NotUtf8 {
        /// Byte offset of the first bad byte.
        offset: usize,
    },
    /// A JID listed twice (compared lowercased).
    Duplicate {
        /// The JID, lowercased.
        jid: String,
        /// The 1-based line of the second listing.
        line: usize,
        /// The 1-based line of the first.
        first: usize,
    },
    /// `user@domain:` with nothing after the colon: such a user could
    /// never log in, so it is a mistake in the file, not a user.
    EmptyPassword {
        /// The 1-based line.
        line: usize,
    },
    /// A line that is not `user@domain:password` (no colon, or no domain
    /// before it): a typo would otherwise lock that user out silently.
    BadLine {
        /// The 1-based line.
        line: usize,
    },
}

/// A `--users` file that cannot be used; `Display` names the path and the
/// reason (the caller turns it into exit status 2).
#[derive(Debug)]
pub struct UsersError {
    path: PathBuf,
    kind: UsersErrorKind,
}

impl UsersError {
    /// What is wrong with it.
    #[cfg(test)]
    pub fn kind(&self) -> &UsersErrorKind {
        &self.kind
    }
}

impl fmt::Display for UsersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--users {}: ", self.path.display())?;
        match &self.kind {
            UsersErrorKind::Read(e) => write!(f, "cannot read: {e}"),
            UsersErrorKind::NotUtf8 { offset } => {
                write!(f, "not UTF-8 (first bad byte at offset {offset})")
            }
            UsersErrorKind::Duplicate { jid, line, first } => {
                write!(
                    f,
                    "line {line}: duplicate user {jid} (first on line {first})"
                )
            }
            UsersErrorKind::EmptyPassword { line } => write!(f, "line {line}: empty password"),
            UsersErrorKind::BadLine { line } => {
                write!(f, "line {line}: not user@domain:password")
            }
        }
    }
}

impl std::error::Error for UsersError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            UsersErrorKind::Read(e) => Some(e),
            _ => None,
        }
    }
}

/// Reads a users file: `user@domain:password` per line (the password is
/// everything after the first `:`); blank lines and `#` comments skipped;
/// a leading UTF-8 BOM ignored (editors on Windows write one). A line
/// that is not `user@domain:password` is an error naming it; users past
/// [`MAX_USERS`] are ignored with a warning.
pub fn load_users(path: &Path) -> Result<Users, UsersError> {
    let err = |kind| UsersError {
        path: path.to_path_buf(),
        kind,
    };
    let bytes = std::fs::read(path).map_err(|e| err(UsersErrorKind::Read(e)))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        err(UsersErrorKind::NotUtf8 {
            offset: e.utf8_error().valid_up_to(),
        })
    })?;
    parse_users(&text).map_err(err)
}

pub(super) fn parse_users(text: &str) -> Result<Users, UsersErrorKind> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut users = Users::default();
    // JID → line, to name both lines of a duplicate.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((jid, password)) = line
            .split_once(':')
            .and_then(|(j, p)| Some((bare_jid(j.trim())?, p)))
        else {
            return Err(UsersErrorKind::BadLine { line: line_no });
        };
        if password.is_empty() {
            return Err(UsersErrorKind::EmptyPassword { line: line_no });
        }
        if let Some(&first) = seen.get(&jid) {
            return Err(UsersErrorKind::Duplicate {
                jid,
                line: line_no,
                first,
            });
        }
        if users.entries.len() >= MAX_USERS {
            log::warn!("--users: more than {MAX_USERS} users; the rest are ignored");
            break;
        }
        users.entries.push((jid.as_str().into(), password.into()));
        seen.insert(jid, line_no);
    }
    Ok(users)
}

/// `text` as a users file, for the tests of this app's modules.
#[cfg(test)]
pub(super) fn parsed(text: &str) -> Users {
    match parse_users(text) {
        Ok(u) => u,
        Err(e) => panic!("{text:?}: {e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Mongoose;
    use super::*;

    fn password<'u>(u: &'u Users, jid: &str) -> Option<&'u str> {
        u.entries
            .iter()
            .find(|(j, _)| &**j == jid)
            .map(|(_, p)| &**p)
    }

    #[test]
    fn users_file() {
        let u = parsed("# comment\n\nalice@wonderland.lit:secret\nrabbit@wonderland.lit:pa:ss\n");
        assert_eq!(u.len(), 2);
        assert_eq!(password(&u, "rabbit@wonderland.lit"), Some("pa:ss"));
        for (text, line) in [
            ("a@x:1\nbad line\n", 2),
            ("# c\nnodomain:pw\n", 2),
            ("@x:pw\n", 1),
            ("a@:pw\n", 1),
        ] {
            match parse_users(text) {
                Err(UsersErrorKind::BadLine { line: l }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn users_file_bom_is_stripped() {
        let u = parsed("\u{feff}alice@wonderland.lit:secret\n");
        assert_eq!(password(&u, "alice@wonderland.lit"), Some("secret"));
        // Only at the very start: elsewhere it is part of a (bad) line.
        assert!(matches!(
            parse_users("alice@wonderland.lit:secret\n\u{feff}# not a comment\n"),
            Err(UsersErrorKind::BadLine { line: 2 })
        ));
    }

    #[test]
    fn users_file_duplicate_names_both_lines() {
        let e = parse_users("a@x:1\n\n# c\nA@X:2\n");
        match e {
            Err(UsersErrorKind::Duplicate { jid, line, first }) => {
                assert_eq!((jid.as_str(), line, first), ("a@x", 4, 1));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn users_file_empty_password_names_the_line() {
        match parse_users("a@x:1\nb@x:\n") {
            Err(UsersErrorKind::EmptyPassword { line: 2 }) => {}
            other => panic!("{other:?}"),
        }
        // Spaces are trimmed, so a password of spaces is empty too.
        assert!(matches!(
            parse_users("b@x:   \n"),
            Err(UsersErrorKind::EmptyPassword { line: 1 })
        ));
    }

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ssed-users-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn load_users_missing_file_is_an_error_naming_the_path() {
        let p = std::env::temp_dir().join("ssed-users-does-not-exist.txt");
        let e = load_users(&p).unwrap_err();
        assert!(matches!(e.kind(), UsersErrorKind::Read(_)));
        let msg = e.to_string();
        assert!(msg.contains("ssed-users-does-not-exist.txt"), "{msg}");
        assert!(msg.contains("cannot read"), "{msg}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn load_users_unreadable_file_is_an_error() {
        // A directory exists but cannot be read as a file (works as root too).
        let e = load_users(&std::env::temp_dir()).unwrap_err();
        assert!(matches!(e.kind(), UsersErrorKind::Read(_)), "{e}");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn load_users_non_utf8_file_is_an_error() {
        let p = temp("latin1", b"alice@x:caf\xe9\n");
        let e = load_users(&p).unwrap_err();
        assert!(
            matches!(e.kind(), UsersErrorKind::NotUtf8 { offset: 11 }),
            "{e}"
        );
        assert!(e.to_string().contains("not UTF-8"), "{e}");
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn load_users_reports_duplicates_and_empty_passwords_with_the_path() {
        let p = temp("dup", b"a@x:1\na@x:2\n");
        let msg = load_users(&p).unwrap_err().to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(
            msg.contains("line 2: duplicate user a@x (first on line 1)"),
            "{msg}"
        );
        let _ = std::fs::remove_file(p);
        let p = temp("empty", b"a@x:\n");
        let msg = load_users(&p).unwrap_err().to_string();
        assert!(msg.contains("line 1: empty password"), "{msg}");
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn load_users_reads_a_good_file_and_new_uses_it() {
        let p = temp("good", "\u{feff}alice@x:s\nbob@x:t\n".as_bytes());
        assert_eq!(load_users(&p).map(|u| u.len()).ok(), Some(2));
        assert_eq!(Mongoose::new(Some(&p)).user_count(), 2);
        let _ = std::fs::remove_file(&p);
        // A bad file leaves no users (and is logged).
        assert_eq!(Mongoose::new(Some(&p)).user_count(), 0);
        assert_eq!(Mongoose::new(None).user_count(), 0);
    }
}
