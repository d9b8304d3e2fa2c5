//! The `keyledger` command: parses the command line and hands over to the
//! library (`keyledger::cli`), so tests and the binary share every path.

fn main() -> std::process::ExitCode {
    keyledger::cli::main()
}
