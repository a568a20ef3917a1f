//! The `trellis` executable; everything lives in the library.

fn main() -> std::process::ExitCode {
    trellis::cli::main()
}
