//! `ddpm info`: what this build and this machine offer for running the kernels, where the commands run by
//! default and with how many threads, and why CUDA is not used when it is not.

use anyhow::Result;
use ddpm::gpu::cuda::{self, Cuda};
use ddpm::gpu::kernels::MODULES;
use ddpm::gpu::{emu::Emulator, Executor, Kernel};

pub fn run() -> Result<()> {
    println!("ddpm {}", env!("CARGO_PKG_VERSION"));
    let embedded = MODULES.iter().filter(|m| m.ptx.is_some()).count();
    println!(
        "kernels: {} in {} files; PTX_EMBEDDED: {} ({embedded} of {} files compiled by NVRTC at build time{})",
        Kernel::ALL.len(),
        MODULES.len(),
        if embedded == MODULES.len() { "yes" } else { "no" },
        MODULES.len(),
        if embedded < MODULES.len() { "; the rest is compiled at run time, which needs libnvrtc" } else { "" }
    );
    let or_why = |r: ddpm::Result<String>| r.unwrap_or_else(|e| format!("not available: {e}"));
    println!("CUDA driver: {}", or_why(cuda::driver_version()));
    println!("NVRTC (run time): {}", or_why(cuda::nvrtc_version()));
    println!("emulator: {}", Emulator::new().describe());
    let threads = rayon::current_num_threads();
    let cpu = format!("the CPU with {threads} threads (RAYON_NUM_THREADS sets the number)");
    let auto = match cuda::device_count() {
        Err(why) => {
            println!("CUDA devices: none; CUDA is not used: {why}");
            cpu.clone()
        }
        Ok(n) => {
            println!("CUDA devices: {n}");
            for i in 0..n {
                match Cuda::new(i) {
                    Ok(dev) => println!("  {}", dev.describe()),
                    Err(why) => println!("  device {i}: unusable: {why}"),
                }
            }
            match Cuda::new(0) {
                Ok(dev) => format!("CUDA device 0 ({})", dev.describe()),
                Err(why) => {
                    println!("CUDA is not used: device 0 cannot be opened: {why}");
                    cpu.clone()
                }
            }
        }
    };
    println!("CPU threads: {threads}");
    // What `train`, `sample`, `eval`, `sampler-table` and `train-classifier` do with their default `--device auto`.
    println!("train and sample (--device auto) run on {auto}");
    let recipe = if auto == cpu { "cpu" } else { "reference" };
    println!("train's default recipe there: {recipe}; --device cpu runs on {cpu}");
    Ok(())
}
