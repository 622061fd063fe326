//! ssed-bench: load and density measurements for SSE servers (placeholder).

fn main() {
    eprintln!("ssed-bench: not implemented yet");
    std::process::exit(2);
}
