//! The `keyledger` command: parses the command line and hands over to the
//! library (`keyledger::cli`), so tests and the binary share every path.

fn main() -> std::process::ExitCode {
    keyledger::cli::main()
}

/// mimalloc instead of glibc's allocator: a verification makes about 35
/// small allocations (most in the HTTP framework), a key creation hundreds.
/// Measured A/B in the README's benchmark section (less CPU per request,
/// fewer instructions per creation); RSS after a million distinct keys
/// stays under the bound stated there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
