//! Builds the CUDA kernels twice: each op family's `.cu` file beside its Rust code (`src/**/*.cu`) and the
//! emulator's self-test (`kernels/selftest.cu`), all sharing `kernels/common.cuh`:
//!
//! 1. For the CPU emulator: each file is compiled as host C++ with `emu/shim.h` force-included, together with the
//!    emulator runtime (`emu/runtime.cpp`) and generated glue that calls each kernel from a `void**` argument
//!    array (the same convention as `cuLaunchKernel`). This always happens, so the kernels run in every test pass.
//! 2. For the GPU: when libnvrtc can be loaded, every file goes through NVRTC to PTX for a virtual architecture
//!    (`compute_90` unless `KERNELS_ARCH` says otherwise; the tensor-core helpers need sm_80 or newer), and the PTX is embedded; so is an `sm_90` cubin of
//!    every file (a second NVRTC pass), which an sm_90 device (H100/H200) loads without JIT. A kernel that NVRTC
//!    rejects fails the build. Without NVRTC one cargo warning is printed and only the sources are embedded, to be
//!    compiled at run time on a machine that has a GPU and NVRTC.
//!
//! Both share one parse of the kernels' `extern "C" __global__` signatures, from which `$OUT_DIR/kernels.rs`
//! declares the `Kernel` enum, each kernel's parameter list (checked at every launch), its launch limits and the
//! emulator's table. The launch limits come from the source:
//!
//! - `__launch_bounds__(N, ...)`: a block of more than `N` threads is refused. `N` is an integer literal or the
//!   name of a `#define NAME <integer>` in the file or in `kernels/common.cuh`.
//! - `// max-dynamic-shared: BYTES` in the comment lines directly above the kernel: the kernel may be launched
//!   with up to `BYTES` of dynamic shared memory (at most 227 KiB, the sm_90 maximum) instead of the default
//!   48 KiB, and the CUDA executor raises the function's limit to that when it loads it.
use std::collections::HashMap;
use std::ffi::CString;
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

/// Dynamic shared memory a kernel may use without opting in: what every CUDA device allows.
const DEFAULT_DYNAMIC_SHARED: u32 = 48 * 1024;
/// The most an opt-in may ask for: sm_90's 227 KiB per block.
const MAX_DYNAMIC_SHARED: u32 = 227 * 1024;
/// The real architecture of the embedded cubins.
const CUBIN_ARCH: &str = "sm_90";

struct KernelSig {
    name: String,
    params: Vec<(String, ParamKind, &'static str)>,
    /// The first argument of `__launch_bounds__`, when the kernel has one.
    max_threads: Option<u32>,
    /// Dynamic shared memory it may be launched with: its `// max-dynamic-shared:` opt-in, else 48 KiB.
    max_dynamic_shared: u32,
    /// Bytes of the `__shared__` arrays declared in its body.
    static_shared: u32,
}

struct Module {
    file: String,
    /// The source with `#include "common.cuh"` inlined, so NVRTC needs no include path (at build or run time).
    source: String,
    options: Vec<String>,
    kernels: Vec<KernelSig>,
}

/// The integer `#define`s of `text` (`#define NAME 256`, or an expression of integers, earlier names, `+ - * /`
/// and parentheses without spaces inside, such as `(TM + SPAD)`), by name.
fn integer_defines(text: &str, out: &mut HashMap<String, u32>) {
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("#define ") else { continue };
        let (name, value) = rest.trim().split_once(char::is_whitespace).unwrap_or((rest.trim(), ""));
        let value = value.split("//").next().unwrap_or("").trim();
        if name.contains('(') || value.is_empty() {
            continue; // a function-like macro, or a flag
        }
        if let Some(v) = eval_int(value, out) {
            out.insert(name.to_string(), v);
        }
    }
}

/// The value of an integer expression of literals, names in `defines`, `+ - * /` and parentheses; `None` when it
/// is anything else.
fn eval_int(expr: &str, defines: &HashMap<String, u32>) -> Option<u32> {
    fn sum(t: &[String], i: &mut usize, d: &HashMap<String, u32>) -> Option<i64> {
        let mut v = product(t, i, d)?;
        while let Some(op) = t.get(*i).filter(|o| *o == "+" || *o == "-").cloned() {
            *i += 1;
            let r = product(t, i, d)?;
            v = if op == "+" { v + r } else { v - r };
        }
        Some(v)
    }
    fn product(t: &[String], i: &mut usize, d: &HashMap<String, u32>) -> Option<i64> {
        let mut v = atom(t, i, d)?;
        while let Some(op) = t.get(*i).filter(|o| *o == "*" || *o == "/").cloned() {
            *i += 1;
            let r = atom(t, i, d)?;
            v = if op == "*" { v * r } else { v.checked_div(r)? };
        }
        Some(v)
    }
    fn atom(t: &[String], i: &mut usize, d: &HashMap<String, u32>) -> Option<i64> {
        let tok = t.get(*i)?.clone();
        *i += 1;
        if tok == "(" {
            let v = sum(t, i, d)?;
            (t.get(*i)? == ")").then(|| *i += 1)?;
            return Some(v);
        }
        tok.trim_end_matches(['u', 'U']).parse().ok().or_else(|| d.get(&tok).map(|&v| v as i64))
    }
    let mut tokens = Vec::new();
    let mut word = String::new();
    for ch in expr.chars() {
        if ch.is_alphanumeric() || ch == '_' {
            word.push(ch);
            continue;
        }
        if !word.is_empty() {
            tokens.push(std::mem::take(&mut word));
        }
        if "+-*/()".contains(ch) {
            tokens.push(ch.to_string());
        } else if !ch.is_whitespace() {
            return None;
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    let mut i = 0;
    let v = sum(&tokens, &mut i, defines)?;
    (i == tokens.len()).then_some(v).and_then(|v| u32::try_from(v).ok())
}

/// The block-size bound of `__launch_bounds__(args)`: its first argument, a literal or a name in `defines`.
fn launch_bound(file: &str, name: &str, args: &str, defines: &HashMap<String, u32>) -> u32 {
    let first = args.split(',').next().unwrap_or("").trim();
    let value = eval_int(first, defines);
    match value {
        Some(v) if (1..=1024).contains(&v) => v,
        _ => panic!(
            "{file}: kernel {name}: __launch_bounds__({args}): the first argument must be an integer literal or the \
             name of a `#define NAME <integer>` in the file or common.cuh, from 1 to 1024"
        ),
    }
}

/// The `// max-dynamic-shared: BYTES` opt-in among the comment lines directly above byte `at` of `src`.
fn dynamic_shared_opt_in(file: &str, src: &str, at: usize) -> u32 {
    let comments = src[..at].lines().rev().map_while(|l| l.trim().strip_prefix("//"));
    for c in comments {
        if let Some(v) = c.trim().strip_prefix("max-dynamic-shared:") {
            return match v.trim().parse() {
                Ok(b) if (1..=MAX_DYNAMIC_SHARED).contains(&b) => b,
                _ => panic!(
                    "{file}: `// max-dynamic-shared: {}` above byte {at}: expected a byte count from 1 to \
                     {MAX_DYNAMIC_SHARED} (227 KiB, sm_90's maximum per block)",
                    v.trim()
                ),
            };
        }
    }
    DEFAULT_DYNAMIC_SHARED
}

/// Bytes of the static `__shared__` arrays declared in a kernel's `body` (`__shared__ T name[D1][D2]..;`, each `D` a
/// literal or a `#define`d name; `T` float, int, unsigned, bf16 or double). Shared memory of helpers the kernel
/// calls is not counted: helpers here take their scratch arrays as arguments.
fn static_shared_bytes(file: &str, kernel: &str, body: &str, defines: &HashMap<String, u32>) -> u32 {
    let mut total = 0u32;
    let code: String = body.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    for decl in code.split("__shared__").skip(1) {
        let decl = &decl[..decl.find(';').unwrap_or(decl.len())];
        if decl.contains("[]") {
            continue; // `extern __shared__ T name[]`: dynamic shared memory, sized at launch
        }
        let bad =
            || -> u32 { panic!("{file}: kernel {kernel}: cannot size `__shared__{decl};` (see static_shared_bytes)") };
        let open = decl.find('[').unwrap_or_else(|| bad() as usize);
        let words: Vec<&str> = decl[..open].split_whitespace().filter(|w| !w.starts_with("__align__")).collect();
        let size = match words.first().copied() {
            Some("float" | "int" | "unsigned") => 4,
            Some("bf16") => 2,
            Some("double") => 8,
            _ => bad(),
        };
        let dims = decl[open..].split(['[', ']']).map(str::trim).filter(|d| !d.is_empty());
        let count = dims.fold(1u32, |acc, d| acc * eval_int(d, defines).unwrap_or_else(&bad));
        total += size * count;
    }
    total
}

/// The `extern "C" __global__ void name(params)` declarations of one file, in order, with their launch limits.
fn parse_kernels(file: &str, src: &str, defines: &HashMap<String, u32>) -> Vec<KernelSig> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find("extern \"C\" __global__") {
        let max_dynamic_shared = dynamic_shared_opt_in(file, src, src.len() - rest.len() + at);
        rest = &rest[at..];
        let open = rest.find('(').unwrap();
        let mut head = &rest[..open];
        // skip `__launch_bounds__(...)`, whose parenthesis comes before the name's, keeping its arguments
        let mut body_from = open;
        let mut bounds = None;
        if head.contains("__launch_bounds__") {
            let close = rest[open..].find(')').unwrap() + open;
            let open2 = rest[close..].find('(').unwrap() + close;
            bounds = Some(&rest[open + 1..close]);
            head = &rest[close + 1..open2];
            body_from = open2;
        }
        let name = head.split_whitespace().last().unwrap().to_string();
        let max_threads = bounds.map(|args| launch_bound(file, &name, args, defines));
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
        // The body: from the first `{` after the parameters to its matching `}`.
        let body_start = rest[close..].find('{').unwrap() + close;
        let mut depth = 0;
        let body_end = rest[body_start..]
            .char_indices()
            .find_map(|(i, ch)| {
                depth += match ch {
                    '{' => 1,
                    '}' => -1,
                    _ => 0,
                };
                (depth == 0).then_some(body_start + i)
            })
            .unwrap_or_else(|| panic!("{file}: kernel {name}: no closing brace"));
        let static_shared = static_shared_bytes(file, &name, &rest[body_start..body_end], defines);
        if static_shared > DEFAULT_DYNAMIC_SHARED {
            panic!(
                "{file}: kernel {name}: {static_shared} bytes of static shared memory, more than the 48 KiB allowed"
            );
        }
        out.push(KernelSig { name, params, max_threads, max_dynamic_shared, static_shared });
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
            let mut defines = HashMap::new();
            integer_defines(&common, &mut defines);
            integer_defines(&text, &mut defines);
            let kernels = parse_kernels(&file, &text, &defines);
            Module { file, source, options, kernels }
        })
        .collect();

    build_emulator(&root, &out, &files, &modules);
    let nvrtc_version = build_gpu(&out, &modules);
    write_table(&out, &modules, nvrtc_version.as_deref());
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

/// NVRTC to PTX (for `KERNELS_ARCH`) and to an sm_90 cubin for every module when libnvrtc loads, returning its
/// version; `None` (and one warning) when it does not.
fn build_gpu(out: &Path, modules: &[Module]) -> Option<String> {
    // cudarc panics on first use when the library is missing, so probe first.
    // SAFETY: only probes whether the shared library can be opened.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        println!(
            "cargo:warning=libnvrtc not found: embedding CUDA sources for run-time compilation instead of PTX \
             (scripts/install-nvrtc.sh installs it; put its lib dir on LD_LIBRARY_PATH)"
        );
        return None;
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
        match cubin(m, CUBIN_ARCH) {
            Ok(bin) => fs::write(out.join(format!("{}.cubin", stem(&m.file))), bin).unwrap(),
            Err(e) => panic!("NVRTC failed to compile {} for {CUBIN_ARCH}:\n{e}", m.file),
        }
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (probed above) and both outputs outlive the call.
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    assert_eq!(rc, cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS, "nvrtcVersion");
    Some(format!("{major}.{minor}"))
}

/// One module compiled by NVRTC for a real architecture (`sm_XY`): the cubin's bytes, or NVRTC's log.
fn cubin(m: &Module, arch: &str) -> Result<Vec<u8>, String> {
    use cudarc::nvrtc::{result, sys};
    let src = CString::new(m.source.as_str()).unwrap();
    let name = CString::new(m.file.as_str()).unwrap();
    let prog = result::create_program(&src, Some(&name)).map_err(|e| format!("{e:?}"))?;
    let mut options = vec![format!("--gpu-architecture={arch}")];
    options.extend(m.options.iter().cloned());
    // SAFETY: `prog` is a live program (created above, destroyed below), and the buffers passed to NVRTC are as
    // long as the sizes it reports.
    let bin = unsafe {
        match result::compile_program(prog, &options) {
            Err(e) => {
                let log = result::get_program_log(prog).unwrap_or_default();
                let log: Vec<u8> = log.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
                Err(format!("{e:?}\n{}", String::from_utf8_lossy(&log)))
            }
            Ok(()) => {
                let mut size = 0;
                let mut bin = Vec::new();
                let mut rc = sys::nvrtcGetCUBINSize(prog, &mut size);
                if rc == sys::nvrtcResult::NVRTC_SUCCESS {
                    bin = vec![0u8; size];
                    rc = sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr().cast());
                }
                if rc == sys::nvrtcResult::NVRTC_SUCCESS {
                    Ok(bin)
                } else {
                    Err(format!("nvrtcGetCUBIN: {rc:?}"))
                }
            }
        }
    };
    // SAFETY: `prog` was created above and is not used after this.
    unsafe { result::destroy_program(prog) }.map_err(|e| format!("{e:?}"))?;
    bin
}

/// `$OUT_DIR/kernels.rs`: the kernel enum, parameter lists, modules (source, options, PTX) and emulator table.
fn write_table(out: &Path, modules: &[Module], nvrtc_version: Option<&str>) {
    let ptx_embedded = nvrtc_version.is_some();
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
    s += "        }\n    }\n    /// The most threads a block may have: the first argument of its `__launch_bounds__`, if any.\n";
    s += "    pub fn max_threads(self) -> Option<u32> {\n        match self {\n";
    for (_, k) in &kernels {
        writeln!(s, "            Kernel::{} => {:?},", camel(&k.name), k.max_threads).unwrap();
    }
    s += "        }\n    }\n    /// The most dynamic shared memory (bytes) a launch may ask for: 48 KiB, or the kernel's\n";
    s += "    /// `// max-dynamic-shared:` opt-in.\n    pub fn max_dynamic_shared(self) -> u32 {\n        match self {\n";
    for (_, k) in &kernels {
        writeln!(s, "            Kernel::{} => {},", camel(&k.name), k.max_dynamic_shared).unwrap();
    }
    s += "        }\n    }\n    /// Bytes of the static `__shared__` arrays declared in its body.\n";
    s += "    pub fn static_shared(self) -> u32 {\n        match self {\n";
    for (_, k) in &kernels {
        writeln!(s, "            Kernel::{} => {},", camel(&k.name), k.static_shared).unwrap();
    }
    s += "        }\n    }\n}\n\n";
    s += "/// The NVRTC version that compiled the embedded PTX and cubins; `None` when libnvrtc was absent at build time.\n";
    writeln!(s, "pub const NVRTC_VERSION: Option<&str> = {nvrtc_version:?};\n").unwrap();
    s += "/// The real architecture of the embedded cubins.\n";
    writeln!(s, "pub const CUBIN_ARCH: &str = {CUBIN_ARCH:?};\n").unwrap();
    s += "/// Whether build.rs compiled the kernels to PTX (libnvrtc was present at build time).\n";
    writeln!(s, "pub const PTX_EMBEDDED: bool = {ptx_embedded};\n").unwrap();
    s += "/// One entry per kernel file, in [`Kernel::module`] order.\npub const MODULES: &[Module] = &[\n";
    for m in modules {
        let src_path = out.join(format!("{}.src", stem(&m.file)));
        fs::write(&src_path, &m.source).unwrap();
        let (ptx, cubin) = if ptx_embedded {
            (
                format!("Some(include_str!({:?}))", out.join(format!("{}.ptx", stem(&m.file)))),
                format!("Some(include_bytes!({:?}))", out.join(format!("{}.cubin", stem(&m.file)))),
            )
        } else {
            ("None".into(), "None".into())
        };
        writeln!(
            s,
            "    Module {{ file: {:?}, source: include_str!({:?}), options: &{:?}, ptx: {ptx}, cubin: {cubin} }},",
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
