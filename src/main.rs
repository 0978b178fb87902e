//! The `ddpm` command line: `ddpm train` and `ddpm sample`. See `ddpm --help`.

mod cli;

/// Reuses freed tensor-sized blocks instead of page-faulting fresh ones in (see `ddpm::alloc`).
#[global_allocator]
static ALLOC: ddpm::alloc::CachingAlloc = ddpm::alloc::CachingAlloc;

fn main() {
    let args = cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
