// The kind of a kernel parameter: shared, through `include!`, by the crate (`src/gpu/kernels.rs`) and build.rs,
// which generates each kernel's parameter list from the `.cu` signatures.

/// The kind of one kernel parameter, from its C type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// `const float*`.
    ConstPtr,
    /// `float*`.
    MutPtr,
    /// `const int*`.
    ConstIntPtr,
    /// `int*`.
    MutIntPtr,
    /// `const bf16*`: bfloat16 values, two to a 4-byte word.
    ConstBf16Ptr,
    /// `bf16*`.
    MutBf16Ptr,
    /// `int`.
    I32,
    /// `long long`.
    I64,
    /// `unsigned long long`.
    U64,
    /// `float`.
    F32,
}
