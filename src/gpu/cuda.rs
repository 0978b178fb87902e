//! Real CUDA through cudarc: one context, one stream, every module loaded once at start-up, every kernel looked up
//! once, and a caching allocator so that a training loop, which asks for the same sizes every step, allocates device
//! memory only in its first step.
//!
//! Each module is loaded from the sm_90 cubin build.rs embedded when the device is exactly sm_90 (no JIT at
//! start-up); else, or when the driver refuses the cubin, from the embedded PTX (JIT-compiled by the driver); and
//! without embedded PTX from the source, compiled by NVRTC at run time. The description says which.
//!
//! `DDPM_SYNC_LAUNCHES=1` (read once, when the device is opened) waits for every launch to finish, so that a fault
//! inside a kernel is reported as an error naming that kernel instead of by some later call.
//!
//! Nothing here panics on a machine without CUDA: cudarc loads libcuda and libnvrtc on first use and panics when
//! they are missing, so their presence is probed first and their absence is an [`Error::Device`] saying why.

use super::count::Counters;
use super::kernels::{Kernel, CUBIN_ARCH, DEFAULT_MAX_DYNAMIC_SHARED, MODULES};
use super::{check_launch, Arg, DeviceBuf, Executor, LaunchCfg};
use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

fn dev_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("{what}: {e:?}"))
}

/// Freed allocations by size class, reused by later allocations of the same class.
type Pool = Arc<Mutex<Cache>>;

/// Allocations by size class.
type Slices = HashMap<usize, Vec<CudaSlice<f32>>>;

#[derive(Default)]
struct Cache {
    free: Slices,
    /// While a graph is captured: what the capture frees, kept apart (the graph owns it, since its launches
    /// address it), and every allocation it made or launch argument it passed, which the graph keeps alive.
    capture: Option<(Slices, Vec<Weak<Storage>>)>,
}

impl Cache {
    fn lock(pool: &Pool) -> std::sync::MutexGuard<'_, Cache> {
        // Lists of allocations, valid whatever a panicking holder was doing.
        pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where an allocation freed now goes.
    fn freed(&mut self) -> &mut Slices {
        match &mut self.capture {
            Some((freed, _)) => freed,
            None => &mut self.free,
        }
    }

    /// A cached allocation of size class `class`: during a capture first one the capture freed.
    fn take(&mut self, class: usize) -> Option<CudaSlice<f32>> {
        let captured = self.capture.as_mut().and_then(|(freed, _)| freed.get_mut(&class)?.pop());
        captured.or_else(|| self.free.get_mut(&class)?.pop())
    }

    /// Notes that a capture in progress (if any) uses `storage`.
    fn touch(&mut self, storage: &Arc<Storage>) {
        if let Some((_, touched)) = &mut self.capture {
            touched.push(Arc::downgrade(storage));
        }
    }
}

/// Allocations are rounded up to a whole number of 1024 words (4 KiB) so that near-equal sizes share a class.
pub(crate) fn size_class(len: usize) -> usize {
    len.max(1).div_ceil(1024) * 1024
}

/// One allocation from the pool; returns there when the last buffer using it is dropped.
struct Storage {
    slice: Option<CudaSlice<f32>>,
    pool: Pool,
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(s) = self.slice.take() {
            Cache::lock(&self.pool).freed().entry(s.len()).or_default().push(s);
        }
    }
}

/// `len` words of device memory from word `offset` of an allocation (0 unless the buffer is a view).
pub struct CudaBuf {
    storage: Arc<Storage>,
    offset: usize,
    len: usize,
}

impl CudaBuf {
    fn slice(&self) -> &CudaSlice<f32> {
        self.storage.slice.as_ref().expect("present until drop")
    }
}

impl std::fmt::Debug for CudaBuf {
    /// The length only: reading the contents needs the executor.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBuf[{} words]", self.len)
    }
}

impl DeviceBuf for CudaBuf {
    fn len(&self) -> usize {
        self.len
    }
}

/// A CUDA device with the kernels loaded.
pub struct Cuda {
    stream: Arc<CudaStream>,
    /// Each kernel in [`Kernel::ALL`] order; `None` for those a device does not load.
    funcs: Vec<Option<CudaFunction>>,
    pool: Pool,
    description: String,
    /// `DDPM_SYNC_LAUNCHES` was set: every launch is waited for and its fault reported with its kernel's name.
    sync_launches: bool,
    counters: Counters,
}

/// Whether `DDPM_SYNC_LAUNCHES` asks for synchronous launches: set to anything but empty or `0`.
fn sync_launches_requested() -> bool {
    std::env::var("DDPM_SYNC_LAUNCHES").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Why CUDA cannot be used here, or `Ok(count)` devices.
pub fn device_count() -> Result<usize> {
    // SAFETY: only probes whether the shared library can be opened.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::Device("libcuda (the NVIDIA driver) is not installed or not on the library path".into()));
    }
    cudarc::driver::result::init().map_err(|e| dev_err("the CUDA driver failed to initialise", e))?;
    let n = CudaContext::device_count().map_err(|e| dev_err("counting CUDA devices failed", e))?;
    if n <= 0 {
        return Err(Error::Device("the CUDA driver reports no devices".into()));
    }
    Ok(n as usize)
}

/// The version of the CUDA driver API the installed driver supports, e.g. "13.0"; `Err` saying why when there is
/// no driver.
pub fn driver_version() -> Result<String> {
    driver_cuda_version().map(|(major, minor)| format!("{major}.{minor}"))
}

/// [`driver_version`] as `(major, minor)`, from `cuDriverGetVersion`'s `1000·major + 10·minor`.
pub fn driver_cuda_version() -> Result<(u32, u32)> {
    // SAFETY: only probes whether the shared library can be opened.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::Device("libcuda (the NVIDIA driver) is not installed or not on the library path".into()));
    }
    let mut v = 0;
    // SAFETY: the library is present (checked above) and `v` outlives the call.
    let rc = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    if rc != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        return Err(dev_err("cuDriverGetVersion", rc));
    }
    let v = v.max(0) as u32;
    Ok((v / 1000, v % 1000 / 10))
}

/// The version of the NVRTC library found at run time, e.g. "12.9"; `Err` saying why when there is none.
pub fn nvrtc_version() -> Result<String> {
    // SAFETY: only probes whether the shared library can be opened.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::Device("libnvrtc is not installed or not on the library path".into()));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above) and both outputs outlive the call.
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if rc != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(dev_err("nvrtcVersion", rc));
    }
    Ok(format!("{major}.{minor}"))
}

impl Cuda {
    /// Opens device `ordinal` and loads every kernel module.
    pub fn new(ordinal: usize) -> Result<Self> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::Device(format!("CUDA device {ordinal} requested, {count} present")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| dev_err("creating a CUDA context", e))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| dev_err("querying the compute capability", e))?;
        let name = ctx.name().map_err(|e| dev_err("querying the device name", e))?;
        let memory = ctx.total_mem().map_err(|e| dev_err("querying the device memory", e))?;
        // Graph capture needs a stream of its own (the legacy default stream cannot be captured), and cudarc's
        // per-buffer event tracking off before anything is allocated: every launch and copy goes to this one
        // stream, which orders them, and events recorded during a capture would break it.
        // SAFETY: nothing has been allocated in this context yet, and one stream serves everything.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| dev_err("creating a CUDA stream", e))?;
        let arch = format!("sm_{major}{minor}");
        // The emulator's self-test kernels exist to check the emulator; a device never loads them.
        let mut modules = Vec::with_capacity(MODULES.len());
        let (mut from_cubin, mut from_ptx, mut from_source) = (0, 0, 0);
        let mut cubin_refused = None;
        for m in MODULES {
            if m.file.ends_with("selftest.cu") {
                modules.push(None);
                continue;
            }
            let cubin = m.cubin.filter(|_| arch == CUBIN_ARCH);
            let loaded = cubin.and_then(|bin| match ctx.load_module(cudarc::nvrtc::Ptx::from_binary(bin.to_vec())) {
                Ok(module) => Some(module),
                Err(e) => {
                    cubin_refused.get_or_insert(format!("{}: {e:?}", m.file));
                    None
                }
            });
            let module = match (loaded, m.ptx) {
                (Some(module), _) => {
                    from_cubin += 1;
                    module
                }
                (None, ptx) => {
                    let ptx = match ptx {
                        Some(ptx) => {
                            from_ptx += 1;
                            cudarc::nvrtc::Ptx::from_src(ptx)
                        }
                        None => {
                            from_source += 1;
                            compile_at_run_time(m, major, minor)?
                        }
                    };
                    ctx.load_module(ptx).map_err(|e| dev_err(&format!("loading {}", m.file), e))?
                }
            };
            modules.push(Some(module));
        }
        let funcs = Kernel::ALL
            .iter()
            .map(|&k| {
                let Some(module) = &modules[k.module()] else { return Ok(None) };
                let f = module.load_function(k.name()).map_err(|e| dev_err(&format!("kernel {}", k.name()), e))?;
                // A kernel that opted in to more dynamic shared memory than the default gets it raised on the
                // function, as the driver requires before such a launch.
                if k.max_dynamic_shared() > DEFAULT_MAX_DYNAMIC_SHARED {
                    let attr =
                        cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
                    f.set_attribute(attr, k.max_dynamic_shared() as i32).map_err(|e| {
                        dev_err(
                            &format!(
                                "kernel {}: raising its dynamic shared memory limit to {} bytes on {arch}",
                                k.name(),
                                k.max_dynamic_shared()
                            ),
                            e,
                        )
                    })?;
                }
                Ok(Some(f))
            })
            .collect::<Result<_>>()?;
        let mut source = Vec::new();
        if from_cubin > 0 {
            source.push(format!("{CUBIN_ARCH} cubin from build time ({from_cubin} files)"));
        }
        if from_ptx > 0 {
            source.push(format!("PTX from build time, JIT by the driver ({from_ptx} files)"));
        }
        if from_source > 0 {
            source.push(format!("run-time NVRTC ({from_source} files)"));
        }
        let mut source = source.join(", ");
        if let Some(why) = cubin_refused {
            source += &format!("; the driver refused the cubin of {why}");
        }
        let sync_launches = sync_launches_requested();
        Ok(Cuda {
            stream,
            funcs,
            pool: Arc::default(),
            description: format!(
                "CUDA device {ordinal}: {name} ({arch}, {:.1} GiB, kernels: {source}{})",
                memory as f64 / (1u64 << 30) as f64,
                if sync_launches { "; DDPM_SYNC_LAUNCHES: every launch waited for" } else { "" }
            ),
            sync_launches,
            counters: Counters::default(),
        })
    }
}

/// NVRTC at run time, for the device's own architecture, with the options build.rs would have used.
fn compile_at_run_time(m: &super::kernels::Module, major: i32, minor: i32) -> Result<cudarc::nvrtc::Ptx> {
    // SAFETY: only probes whether the shared library can be opened.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::Device(
            "the kernels were built without NVRTC and libnvrtc is not available at run time either".into(),
        ));
    }
    let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        options: m.options.iter().map(|s| s.to_string()).collect(),
        name: Some(m.file.into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(m.source, opts).map_err(|e| dev_err(&format!("NVRTC on {}", m.file), e))
}

impl Cuda {
    /// An allocation of at least `len` words with unspecified contents: a cached one of the same size class, else a
    /// new one (counted; refused during a graph capture, where it would become part of the graph).
    fn take_slice(&self, len: usize) -> Result<CudaSlice<f32>> {
        let class = size_class(len);
        let mut cache = Cache::lock(&self.pool);
        if let Some(s) = cache.take(class) {
            return Ok(s);
        }
        if cache.capture.is_some() {
            return Err(super::graph::alloc_error(len));
        }
        drop(cache);
        self.counters.allocated();
        // SAFETY: the contents are unspecified by the trait's contract; kernels write before they read.
        unsafe { self.stream.alloc::<f32>(class) }.map_err(|e| dev_err("cuMemAlloc", e))
    }

    /// `slice` as a buffer of `len` words that returns it to the pool when the last view of it is dropped.
    fn wrap(&self, slice: CudaSlice<f32>, len: usize) -> CudaBuf {
        let storage = Arc::new(Storage { slice: Some(slice), pool: self.pool.clone() });
        Cache::lock(&self.pool).touch(&storage);
        CudaBuf { storage, offset: 0, len }
    }

    /// `Err` when a capture is on: `what` (a copy or a wait) would not be part of the graph.
    fn outside_capture(&self, what: &str) -> Result<()> {
        match Cache::lock(&self.pool).capture.is_some() {
            true => Err(super::graph::copy_error(what)),
            false => Ok(()),
        }
    }
}

/// A CUDA graph and what it owns: the allocations its capture freed (its launches still address them) and every
/// buffer the capture allocated or passed to a launch, so that no address it holds is reused while it lives.
pub struct CudaGraphOwned {
    /// `None` when the capture launched nothing.
    graph: Option<cudarc::driver::CudaGraph>,
    kept: Vec<Arc<Storage>>,
    freed: Slices,
    pool: Pool,
    stream: Arc<CudaStream>,
}

impl Drop for CudaGraphOwned {
    fn drop(&mut self) {
        // Replays still running finish first (once per epoch: a wait is cheap there); then the graph goes, then its
        // memory back to the cache.
        if self.graph.is_some() {
            let _ = self.stream.synchronize();
        }
        self.graph = None;
        let freed = std::mem::take(&mut self.freed);
        let mut cache = Cache::lock(&self.pool);
        for (class, slices) in freed {
            cache.freed().entry(class).or_default().extend(slices);
        }
        drop(cache);
        self.kept.clear();
    }
}

/// One argument's value, kept alive while the launch builder holds a reference to it.
enum Val {
    Ptr(u64),
    I32(i32),
    I64(i64),
    U64(u64),
    F32(f32),
}

impl Executor for Cuda {
    type Buf = CudaBuf;
    type Graph = CudaGraphOwned;

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn alloc(&self, len: usize) -> Result<CudaBuf> {
        Ok(self.wrap(self.take_slice(len)?, len))
    }

    fn view(&self, buf: &CudaBuf, offset: usize, len: usize) -> Result<CudaBuf> {
        if offset + len > buf.len {
            return Err(Error::Device(format!(
                "a view of words {offset}..{} of a {}-word buffer",
                offset + len,
                buf.len
            )));
        }
        Ok(CudaBuf { storage: buf.storage.clone(), offset: buf.offset + offset, len })
    }

    fn same_words(&self, a: &CudaBuf, b: &CudaBuf) -> bool {
        Arc::ptr_eq(&a.storage, &b.storage) && (a.offset, a.len) == (b.offset, b.len)
    }

    fn upload(&self, data: &[f32]) -> Result<CudaBuf> {
        self.outside_capture("a copy to the device")?;
        let mut slice = self.take_slice(data.len())?;
        let mut view = slice.slice_mut(..data.len());
        self.stream.memcpy_htod(data, &mut view).map_err(|e| dev_err("copy to device", e))?;
        self.counters.uploaded(data.len());
        Ok(self.wrap(slice, data.len()))
    }

    fn download(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        self.outside_capture("a copy from the device")?;
        self.counters.downloaded(buf.len);
        self.stream
            .clone_dtoh(&buf.slice().slice(buf.offset..buf.offset + buf.len))
            .map_err(|e| dev_err("copy from device", e))
    }

    fn synchronize(&self) -> Result<()> {
        self.outside_capture("a wait for the device")?;
        self.counters.synchronized();
        self.stream.synchronize().map_err(|e| dev_err("synchronize", e))
    }

    unsafe fn launch(&self, kernel: Kernel, cfg: LaunchCfg, args: &[Arg<CudaBuf>]) -> Result<()> {
        check_launch(kernel, cfg, args)?;
        let mut guards = Vec::new();
        let mut vals = Vec::with_capacity(args.len());
        let mut cache = Cache::lock(&self.pool);
        let capturing = cache.capture.is_some();
        for a in args {
            vals.push(match *a {
                Arg::Buf(_) | Arg::BufAt(..) | Arg::Ints(_) | Arg::Bf16(_) => {
                    let (b, off) = a.buffer().expect("a pointer argument");
                    if off > b.len {
                        return Err(Error::Device(format!("{}: buffer offset {off} past {}", kernel.name(), b.len)));
                    }
                    let (ptr, guard) = b.slice().device_ptr(&self.stream);
                    guards.push(guard);
                    cache.touch(&b.storage);
                    Val::Ptr(ptr + 4 * (b.offset + off) as u64)
                }
                Arg::Null => Val::Ptr(0),
                Arg::I32(v) => Val::I32(v),
                Arg::I64(v) => Val::I64(v),
                Arg::U64(v) => Val::U64(v),
                Arg::F32(v) => Val::F32(v),
            });
        }
        drop(cache);
        let Some(func) = &self.funcs[kernel as usize] else {
            return Err(Error::Device(format!("{} is an emulator self-test, not loaded on a device", kernel.name())));
        };
        let mut builder = self.stream.launch_builder(func);
        for v in &vals {
            match v {
                Val::Ptr(p) => builder.arg(p),
                Val::I32(x) => builder.arg(x),
                Val::I64(x) => builder.arg(x),
                Val::U64(x) => builder.arg(x),
                Val::F32(x) => builder.arg(x),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (cfg.grid[0], cfg.grid[1], cfg.grid[2]),
            block_dim: (cfg.block[0], cfg.block[1], cfg.block[2]),
            shared_mem_bytes: cfg.shared_bytes,
        };
        builder.launch(cfg).map_err(|e| dev_err(&format!("launching {}", kernel.name()), e))?;
        if self.sync_launches && !capturing {
            // A fault inside the kernel surfaces here, at the first wait after it, rather than in a later copy.
            self.stream.synchronize().map_err(|e| {
                dev_err(&format!("{} failed while running (DDPM_SYNC_LAUNCHES=1 waited for it)", kernel.name()), e)
            })?;
        }
        drop(guards);
        Ok(())
    }

    fn begin_capture(&self) -> Result<()> {
        let mut cache = Cache::lock(&self.pool);
        if cache.capture.is_some() {
            return Err(Error::Device("a graph capture began inside another".into()));
        }
        // Thread-local mode: only this thread's calls are part of (and checked against) the capture.
        let mode = cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        self.stream.begin_capture(mode).map_err(|e| dev_err("cuStreamBeginCapture", e))?;
        cache.capture = Some(Default::default());
        Ok(())
    }

    fn end_capture(&self) -> Result<CudaGraphOwned> {
        let graph = self.stream.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
        let mut cache = Cache::lock(&self.pool);
        let (freed, touched) = cache.capture.take().ok_or_else(|| Error::Device("no graph capture to end".into()))?;
        drop(cache);
        // Whatever the capture touched and is still alive stays alive with the graph; the rest is in `freed`.
        let kept = touched.iter().filter_map(Weak::upgrade).collect();
        let mut owned =
            CudaGraphOwned { graph: None, kept, freed, pool: self.pool.clone(), stream: self.stream.clone() };
        // On failure `owned` returns the memory to the cache as it drops.
        owned.graph = graph.map_err(|e| dev_err("cuStreamEndCapture / cuGraphInstantiate", e))?;
        Ok(owned)
    }

    fn replay(&self, graph: &CudaGraphOwned) -> Result<()> {
        self.outside_capture("replaying a graph")?;
        let Some(g) = &graph.graph else { return Ok(()) };
        g.launch().map_err(|e| dev_err("cuGraphLaunch", e))?;
        if self.sync_launches {
            self.stream.synchronize().map_err(|e| dev_err("a graph failed while running (DDPM_SYNC_LAUNCHES=1)", e))?;
        }
        Ok(())
    }
}
