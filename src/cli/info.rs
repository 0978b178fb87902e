//! `ddpm info`: what this build and this machine offer for running the kernels (the embedded PTX's ISA version and
//! target, the cubins, the NVRTC that made them, and whether the driver can load that PTX), where the commands run
//! by default and with how many threads, and why CUDA is not used when it is not.

use anyhow::Result;
use ddpm::gpu::cuda::{self, Cuda};
use ddpm::gpu::kernels::{CUBIN_ARCH, MODULES, NVRTC_VERSION};
use ddpm::gpu::{emu::Emulator, ptx, Executor, Kernel};

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
    print_embedded_code();
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

/// The embedded PTX (ISA version, target), the cubins, the NVRTC that compiled them, and whether this machine's
/// driver can load that PTX.
fn print_embedded_code() {
    let ptx: Vec<&str> = MODULES.iter().filter_map(|m| m.ptx).collect();
    let isa = ptx.iter().filter_map(|p| ptx::isa_version(p)).max();
    let targets: std::collections::BTreeSet<&str> = ptx.iter().filter_map(|p| ptx::target(p)).collect();
    match isa {
        Some((major, minor)) => {
            println!("PTX ISA: {major}.{minor}; PTX target: {}", targets.into_iter().collect::<Vec<_>>().join(", "))
        }
        None => println!("PTX ISA: none embedded (built without NVRTC)"),
    }
    let cubins = MODULES.iter().filter(|m| m.cubin.is_some()).count();
    if cubins > 0 {
        println!(
            "cubins: {CUBIN_ARCH}, {cubins} of {} files (an {CUBIN_ARCH} device loads them without JIT)",
            MODULES.len()
        );
    } else {
        println!("cubins: none embedded");
    }
    println!("NVRTC (build time): {}", NVRTC_VERSION.unwrap_or("none (kernels embedded as source)"));
    let Some(isa) = isa else { return };
    let needs = ptx::cuda_for_isa(isa);
    let verdict = match (cuda::driver_cuda_version(), needs) {
        (Err(_), Some((major, minor))) => format!("needs a CUDA {major}.{minor} driver or newer; no driver here"),
        (Err(_), None) => "no driver here".to_string(),
        (Ok(_), None) => format!("unknown: PTX ISA {}.{} is not in this build's table", isa.0, isa.1),
        (Ok(have), Some(need)) if have >= need => {
            format!(
                "yes: the driver supports CUDA {}.{}, PTX ISA {}.{} needs {}.{}",
                have.0, have.1, isa.0, isa.1, need.0, need.1
            )
        }
        (Ok(have), Some(need)) => format!(
            "NO: the driver supports CUDA {}.{}, PTX ISA {}.{} needs {}.{} (update the driver, or rebuild with an \
             older NVRTC; an {CUBIN_ARCH} device may still load the cubins)",
            have.0, have.1, isa.0, isa.1, need.0, need.1
        ),
    };
    println!("driver can load PTX ISA {}.{}: {verdict}", isa.0, isa.1);
}
