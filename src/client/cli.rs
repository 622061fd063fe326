//! `ssed sub` and `ssed pub` (placeholder).

/// Runs `ssed sub ARGS...`; returns the process exit code.
pub fn run_sub(_args: &[String]) -> i32 {
    eprintln!("ssed sub: not implemented yet");
    2
}

/// Runs `ssed pub ARGS...`; returns the process exit code.
pub fn run_pub(_args: &[String]) -> i32 {
    eprintln!("ssed pub: not implemented yet");
    2
}
