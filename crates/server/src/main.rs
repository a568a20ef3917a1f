//! The `trellis` executable; everything lives in the library.

// A proxy allocates a little per request on many threads; mimalloc's
// thread-local free lists cost a fraction of glibc's bins (measured in
// docs/benchmarks/gateway.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    trellis::cli::main()
}
