//! Builds the CUDA kernels twice: each op family's `.cu` file beside its Rust code (`src/**/*.cu`) and the
//! emulator's self-test (`kernels/selftest.cu`), all sharing `kernels/common.cuh`:
//!
//! 1. For the CPU emulator: each file is compiled as host C++ with `emu/shim.h` force-included, together with the
//!    emulator runtime (`emu/runtime.cpp`) and generated glue that calls each kernel from a `void**` argument
//!    array (the same convention as `cuLaunchKernel`). This always happens, so the kernels run in every test pass.
//! 2. For the GPU: when libnvrtc can be loaded, every file goes through NVRTC to PTX for a virtual architecture
//!    (`compute_90` unless `KERNELS_ARCH` says otherwise; the tensor-core helpers need sm_80 or newer), and the PTX
//!    is embedded; a kernel that NVRTC rejects fails the build. Without NVRTC one cargo warning is printed and only
//!    the sources are embedded, to be compiled at run time on a machine that has a GPU and NVRTC.
//!
//! Both share one parse of the kernels' `extern "C" __global__` signatures, from which `$OUT_DIR/kernels.rs`
//! declares the `Kernel` enum, each kernel's parameter list (checked at every launch) and the emulator's table.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

// `ParamKind`, the same enum the crate uses (src/gpu/kernels.rs).
include!("src/gpu/param_kind.rs");

/// The [`ParamKind`] of a C parameter type and its spelling in the emulator glue; `None` for a type kernels may
/// not use (a build error).
fn parse_kind(ty: &str) -> Option<(ParamKind, &'static str)> {
    let ty = ty.replace("__restrict__", "");
    let words: Vec<&str> = ty.split(|c: char| c.is_whitespace() || c == '*').filter(|w| !w.is_empty()).collect();
    let base = words.iter().filter(|w| **w != "const").copied().collect::<Vec<_>>().join(" ");
    if ty.contains('*') {
        let constant = words.first() == Some(&"const");
        return match (base.as_str(), constant) {
            ("float", true) => Some((ParamKind::ConstPtr, "float*")),
            ("float", false) => Some((ParamKind::MutPtr, "float*")),
            ("int", true) => Some((ParamKind::ConstIntPtr, "int*")),
            ("int", false) => Some((ParamKind::MutIntPtr, "int*")),
            ("bf16", true) => Some((ParamKind::ConstBf16Ptr, "bf16*")),
            ("bf16", false) => Some((ParamKind::MutBf16Ptr, "bf16*")),
            _ => None,
        };
    }
    Some(match base.as_str() {
        "int" => (ParamKind::I32, "int"),
        "long long" => (ParamKind::I64, "long long"),
        "u64" | "unsigned long long" => (ParamKind::U64, "unsigned long long"),
        "float" => (ParamKind::F32, "float"),
        _ => return None,
    })
}

struct KernelSig {
    name: String,
    params: Vec<(String, ParamKind, &'static str)>,
}

struct Module {
    file: String,
    /// The source with `#include "common.cuh"` inlined, so NVRTC needs no include path (at build or run time).
    source: String,
    options: Vec<String>,
    kernels: Vec<KernelSig>,
}

/// The `extern "C" __global__ void name(params)` declarations of one file, in order.
fn parse_kernels(file: &str, src: &str) -> Vec<KernelSig> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find("extern \"C\" __global__") {
        rest = &rest[at..];
        let open = rest.find('(').unwrap();
        let mut head = &rest[..open];
        // skip `__launch_bounds__(...)`, whose parenthesis comes before the name's
        let mut body_from = open;
        if head.contains("__launch_bounds__") {
            let close = rest[open..].find(')').unwrap() + open;
            let open2 = rest[close..].find('(').unwrap() + close;
            head = &rest[close + 1..open2];
            body_from = open2;
        }
        let name = head.split_whitespace().last().unwrap().to_string();
        let close = rest[body_from..].find(')').unwrap() + body_from;
        let params = rest[body_from + 1..close]
            .split(',')
            .map(|p| {
                let p = p.trim();
                let split = p.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap() + 1;
                let (ty, pname) = (&p[..split], &p[split..]);
                let (kind, c_ty) = parse_kind(ty)
                    .unwrap_or_else(|| panic!("{file}: kernel {name}: unsupported parameter type `{ty}`"));
                (pname.to_string(), kind, c_ty)
            })
            .collect();
        out.push(KernelSig { name, params });
        rest = &rest[close..];
    }
    out
}

/// Every `.cu` file under `dir`, recursively.
fn cu_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            cu_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "cu") {
            out.push(path);
        }
    }
}

/// The file name of `path` without directories or extension: names the PTX and source files in `OUT_DIR`.
fn stem(path: &str) -> &str {
    Path::new(path).file_stem().unwrap().to_str().unwrap()
}

fn camel(snake: &str) -> String {
    snake.split('_').map(|w| w[..1].to_uppercase() + &w[1..]).collect()
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=emu");
    println!("cargo:rerun-if-changed=src/gpu/param_kind.rs");
    println!("cargo:rerun-if-env-changed=KERNELS_ARCH");
    println!("cargo:rerun-if-env-changed=LD_LIBRARY_PATH");

    let common = fs::read_to_string(root.join("kernels/common.cuh")).unwrap();
    let mut files = Vec::new();
    cu_files(&root.join("src"), &mut files);
    cu_files(&root.join("kernels"), &mut files);
    files.sort();
    let modules: Vec<Module> = files
        .iter()
        .map(|p| {
            let file = p.strip_prefix(&root).unwrap().to_str().unwrap().to_string();
            let text = fs::read_to_string(p).unwrap();
            let options = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("// nvrtc-options:"))
                .flat_map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
                .collect();
            let source = text.replace("#include \"common.cuh\"", &common);
            let kernels = parse_kernels(&file, &text);
            Module { file, source, options, kernels }
        })
        .collect();

    build_emulator(&root, &out, &files, &modules);
    let ptx_embedded = build_ptx(&out, &modules);
    write_table(&out, &modules, ptx_embedded);
}

/// Compiles the kernels, the runtime and the glue into one static library for the emulator.
fn build_emulator(root: &Path, out: &Path, files: &[PathBuf], modules: &[Module]) {
    let mut glue =
        String::from("// generated by build.rs: one void** entry point per kernel\n#include \"common.cuh\"\n");
    for k in modules.iter().flat_map(|m| &m.kernels) {
        let decl: Vec<String> = k.params.iter().map(|(_, _, c)| c.to_string()).collect();
        let call: Vec<String> = k.params.iter().enumerate().map(|(i, (_, _, c))| format!("*({c}*)a[{i}]")).collect();
        writeln!(glue, "extern \"C\" void {}({});", k.name, decl.join(", ")).unwrap();
        writeln!(glue, "extern \"C\" void emu_call_{}(void** a) {{ {}({}); }}", k.name, k.name, call.join(", "))
            .unwrap();
    }
    let glue_path = out.join("emu_glue.cpp");
    fs::write(&glue_path, glue).unwrap();

    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++20")
        .opt_level(2)
        .flag("-x")
        .flag("c++")
        .flag("-include")
        .flag(root.join("emu/shim.h").to_str().unwrap())
        .include(root.join("kernels"))
        // Same rounding as the CPU reference and as NVRTC with --fmad=false: no contraction of a*b + c.
        .flag("-ffp-contract=off")
        // The library is linked into executables only, so the cheapest TLS model is safe.
        .flag("-ftls-model=initial-exec")
        // _longjmp between fiber stacks is what the runtime does; a fortified longjmp would refuse it.
        .flag("-U_FORTIFY_SOURCE")
        .flag("-fno-strict-aliasing")
        .flag("-Wno-unknown-pragmas")
        .flag("-Wno-unused-parameter")
        .warnings(true);
    b.file(root.join("emu/runtime.cpp"));
    for f in files {
        b.file(f);
    }
    b.file(&glue_path);
    b.compile("cuda_emu");
}

/// NVRTC to PTX for every module when libnvrtc loads; false (and one warning) when it does not.
fn build_ptx(out: &Path, modules: &[Module]) -> bool {
    // cudarc panics on first use when the library is missing, so probe first.
    // SAFETY: only probes whether the shared library can be opened.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        println!(
            "cargo:warning=libnvrtc not found: embedding CUDA sources for run-time compilation instead of PTX \
             (scripts/install-nvrtc.sh installs it; put its lib dir on LD_LIBRARY_PATH)"
        );
        return false;
    }
    let arch: &'static str =
        Box::leak(env::var("KERNELS_ARCH").unwrap_or_else(|_| "compute_90".into()).into_boxed_str());
    for m in modules {
        let opts = cudarc::nvrtc::CompileOptions {
            arch: Some(arch),
            options: m.options.clone(),
            name: Some(m.file.clone()),
            ..Default::default()
        };
        match cudarc::nvrtc::compile_ptx_with_opts(&m.source, opts) {
            Ok(ptx) => fs::write(out.join(format!("{}.ptx", stem(&m.file))), ptx.to_src()).unwrap(),
            Err(e) => panic!("NVRTC failed to compile {} for {arch}:\n{e:?}", m.file),
        }
    }
    true
}

/// `$OUT_DIR/kernels.rs`: the kernel enum, parameter lists, modules (source, options, PTX) and emulator table.
fn write_table(out: &Path, modules: &[Module], ptx_embedded: bool) {
    let mut s = String::from("// generated by build.rs from the kernels' .cu files\n\n");
    let kernels: Vec<(usize, &KernelSig)> =
        modules.iter().enumerate().flat_map(|(i, m)| m.kernels.iter().map(move |k| (i, k))).collect();
    s += "/// Every kernel, named after its `extern \"C\"` function.\n";
    s += "#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]\npub enum Kernel {\n";
    for (i, k) in &kernels {
        writeln!(s, "    /// `{}` in `{}`.\n    {},", k.name, modules[*i].file, camel(&k.name)).unwrap();
    }
    s += "}\n\nimpl Kernel {\n    /// All kernels, in declaration order.\n    pub const ALL: &'static [Kernel] = &[";
    for (_, k) in &kernels {
        write!(s, "Kernel::{}, ", camel(&k.name)).unwrap();
    }
    s +=
        "];\n    /// The C name, as NVRTC exports it.\n    pub fn name(self) -> &'static str {\n        match self {\n";
    for (_, k) in &kernels {
        writeln!(s, "            Kernel::{} => \"{}\",", camel(&k.name), k.name).unwrap();
    }
    s += "        }\n    }\n    /// Index of the kernel's file in [`MODULES`].\n    pub fn module(self) -> usize {\n        match self {\n";
    for (i, k) in &kernels {
        writeln!(s, "            Kernel::{} => {i},", camel(&k.name)).unwrap();
    }
    s += "        }\n    }\n    /// The parameters, in order: `(name, kind)`.\n    pub fn params(self) -> &'static [(&'static str, ParamKind)] {\n        match self {\n";
    for (_, k) in &kernels {
        let ps: Vec<String> = k.params.iter().map(|(n, kind, _)| format!("(\"{n}\", ParamKind::{:?})", kind)).collect();
        writeln!(s, "            Kernel::{} => &[{}],", camel(&k.name), ps.join(", ")).unwrap();
    }
    s += "        }\n    }\n}\n\n";
    s += "/// Whether build.rs compiled the kernels to PTX (libnvrtc was present at build time).\n";
    writeln!(s, "pub const PTX_EMBEDDED: bool = {ptx_embedded};\n").unwrap();
    s += "/// One entry per kernel file, in [`Kernel::module`] order.\npub const MODULES: &[Module] = &[\n";
    for m in modules {
        let src_path = out.join(format!("{}.src", stem(&m.file)));
        fs::write(&src_path, &m.source).unwrap();
        let ptx = if ptx_embedded {
            format!("Some(include_str!({:?}))", out.join(format!("{}.ptx", stem(&m.file))))
        } else {
            "None".into()
        };
        writeln!(
            s,
            "    Module {{ file: {:?}, source: include_str!({:?}), options: &{:?}, ptx: {ptx} }},",
            m.file, src_path, m.options
        )
        .unwrap();
    }
    s += "];\n\n";
    s += "extern \"C\" {\n";
    for (_, k) in &kernels {
        writeln!(s, "    fn emu_call_{}(args: *const *mut core::ffi::c_void);", k.name).unwrap();
    }
    s += "}\n\n/// The emulator's entry point of each kernel, in [`Kernel::ALL`] order.\n";
    s += "pub(crate) const EMU_ENTRY: &[unsafe extern \"C\" fn(*const *mut core::ffi::c_void)] = &[";
    for (_, k) in &kernels {
        write!(s, "emu_call_{}, ", k.name).unwrap();
    }
    s += "];\n";
    fs::write(out.join("kernels.rs"), s).unwrap();
}
