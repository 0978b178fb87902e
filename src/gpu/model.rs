//! A cost model that turns a recorded launch sequence into a predicted time, with no GPU: each launch takes the
//! longest of its tensor-core FLOPs, its plain FLOPs and its DRAM bytes at the device's achievable rates (scaled
//! down when its grid covers fewer multiprocessors than the device has), plus the gap between launches, which
//! CUDA graphs shorten. The constants and their sources are in `docs/gpu-model.md`.

use super::count::Launch;

/// A device's achievable rates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceModel {
    /// The name `--model` takes.
    pub name: &'static str,
    /// Multiprocessors.
    pub sms: u64,
    /// Dense bf16 tensor-core FLOP/s (measured peak) and the fraction of it the kernels reach.
    pub tc_flops: f64,
    pub tc_fraction: f64,
    /// f32 FMA-unit FLOP/s (peak) and the fraction the kernels reach.
    pub fp32_flops: f64,
    pub fp32_fraction: f64,
    /// DRAM bytes/s (measured device-to-device copy).
    pub dram: f64,
    /// Seconds between two dependent kernels on one stream: launched one by one, and replayed from a CUDA graph.
    pub launch_gap: f64,
    pub graph_gap: f64,
}

impl DeviceModel {
    /// NVIDIA H200 (132 SMs, HBM3e), the machine the project is lent: rates from `docs/gpu-model.md`.
    pub const H200: DeviceModel = DeviceModel {
        name: "h200",
        sms: 132,
        tc_flops: 790e12,
        tc_fraction: 0.5,
        fp32_flops: 67e12,
        fp32_fraction: 0.5,
        dram: 4.3e12,
        launch_gap: 3e-6,
        graph_gap: 1e-6,
    };

    /// Every model `--model` knows.
    pub const ALL: [DeviceModel; 1] = [DeviceModel::H200];

    /// The model called `name`.
    pub fn by_name(name: &str) -> Option<DeviceModel> {
        Self::ALL.into_iter().find(|m| m.name == name)
    }

    /// Seconds the kernel of `l` runs, without the gap before it.
    pub fn kernel_seconds(&self, l: &Launch) -> f64 {
        // A grid of fewer blocks than multiprocessors leaves the rest idle (one block per multiprocessor assumed,
        // which undercounts small kernels' speed a little and never overcounts it).
        let cover = (l.blocks() as f64 / self.sms as f64).min(1.0);
        let tc = l.cost.tc_flops as f64 / (self.tc_flops * self.tc_fraction);
        let fp32 = l.cost.fp32_flops as f64 / (self.fp32_flops * self.fp32_fraction);
        let dram = l.cost.dram_bytes as f64 / self.dram;
        tc.max(fp32).max(dram) / cover
    }

    /// Seconds the launches take one after another on one stream: kernels plus a gap per launch, `graphs` choosing
    /// the replayed graph's gap.
    pub fn seconds(&self, launches: &[Launch], graphs: bool) -> f64 {
        launches.iter().map(|l| self.kernel_seconds(l) + self.gap(graphs)).sum()
    }

    /// The gap before each launch: replayed from a graph when `graphs`, else launched one by one.
    pub fn gap(&self, graphs: bool) -> f64 {
        if graphs {
            self.graph_gap
        } else {
            self.launch_gap
        }
    }
}
