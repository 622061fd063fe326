fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("sub") => ssed::client::cli::run_sub(&args[1..]),
        Some("pub") => ssed::client::cli::run_pub(&args[1..]),
        _ => 0,
    };
    std::process::exit(code);
}
