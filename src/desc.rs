//! Shape descriptors: the dimensions a kernel needs, as plain data. The tape builds them from tensor shapes, and
//! every backend (the CPU kernels, the GPU launchers) and the tests read them; this module imports nothing from
//! either side.

/// The geometry of one conv between an image `[c, h, w]` and its output grid `[oh, ow]`: kernel `k x k`, stride
/// and zero padding on every side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    /// The geometry for an input `[c, h, w]`; `None` when the kernel does not fit the padded input.
    pub fn new(c: usize, h: usize, w: usize, k: usize, stride: usize, pad: usize) -> Option<Self> {
        if stride == 0 || k == 0 || h + 2 * pad < k || w + 2 * pad < k {
            return None;
        }
        let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
        Some(ConvGeom { c, h, w, k, stride, pad, oh, ow })
    }
    /// Rows of the column matrix: `c·k·k`.
    pub fn col_rows(&self) -> usize {
        self.c * self.k * self.k
    }
    /// Columns of the column matrix: `oh·ow`.
    pub fn col_cols(&self) -> usize {
        self.oh * self.ow
    }
    /// A 1x1, stride-1, unpadded conv, whose column matrix is the image itself.
    pub fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
}

/// A batched convolution: `n` images through [`ConvGeom`] `geom`, and `channels`, the weight's first dimension:
/// the output channels of a conv (weight `[channels, geom.c, k, k]`), the input channels of a transposed conv
/// (weight `[channels, geom.c, k, k]` too, since a transposed conv is the adjoint of the conv with geometry `geom`:
/// its input is `[n, channels, geom.oh, geom.ow]` and its output `[n, geom.c, geom.h, geom.w]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvDesc {
    pub n: usize,
    pub geom: ConvGeom,
    pub channels: usize,
}

/// Columns `start..` of a row-major matrix `buf` of `stride` columns: row `i`, column `start + c` at word
/// `i·stride + start + c`.
pub struct Columns<'a, T: ?Sized> {
    pub buf: &'a T,
    pub start: usize,
    pub stride: usize,
}

impl<T: ?Sized> Clone for Columns<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ?Sized> Copy for Columns<'_, T> {}

impl<T: ?Sized> std::fmt::Debug for Columns<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Columns {{ start: {}, stride: {} }}", self.start, self.stride)
    }
}

/// Terms a conv adds to its output: `out[n, c, :] += bias[c] + chan_bias[n, c] + residual[n, c, :]`, each optional.
/// Fused into the conv, they cost no extra pass over memory and no saved activation.
pub struct Epilogue<'a, T: ?Sized = [f32]> {
    /// `[c_out]`.
    pub bias: Option<&'a T>,
    /// `[n, c_out]`: a per-image channel bias (a ResBlock's time projection), as columns of a wider matrix (the
    /// time projections of every ResBlock, made by one linear layer).
    pub chan_bias: Option<Columns<'a, T>>,
    /// `[n, c_out, oh, ow]`: a residual connection.
    pub residual: Option<&'a T>,
}

impl<'a, T: ?Sized> Epilogue<'a, T> {
    /// No extra terms.
    pub fn none() -> Self {
        Epilogue { bias: None, chan_bias: None, residual: None }
    }

    /// The same terms seen through `f` (e.g. a backend's buffers as slices).
    pub fn map<U: ?Sized>(&self, f: impl Fn(&'a T) -> &'a U) -> Epilogue<'a, U> {
        let chan_bias = self.chan_bias.map(|c| Columns { buf: f(c.buf), start: c.start, stride: c.stride });
        Epilogue { bias: self.bias.map(&f), chan_bias, residual: self.residual.map(&f) }
    }
}

impl<T: ?Sized> Clone for Epilogue<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: ?Sized> Copy for Epilogue<'_, T> {}

/// The gradients a layer's backward may write for its input and its weight; `None` ones are not computed.
pub struct LayerGrads<'a, T: ?Sized = [f32]> {
    /// dL/dx, shaped like the input (overwritten).
    pub dx: Option<&'a mut T>,
    /// dL/dW, shaped like the weight (overwritten).
    pub dw: Option<&'a mut T>,
}

impl<'a, T: ?Sized> LayerGrads<'a, T> {
    /// The same outputs seen through `f` (e.g. a backend's buffers as slices).
    pub fn map<U: ?Sized>(self, f: impl Fn(&'a mut T) -> &'a mut U) -> LayerGrads<'a, U> {
        LayerGrads { dx: self.dx.map(&f), dw: self.dw.map(&f) }
    }
}

/// [`LayerGrads`] as the tape's backward passes hand them to a backend: with `add_dx`, `dx` already holds the
/// input's gradient from its other readers and the pass adds its own to it (in the kernel that computes it where
/// the backend can: one pass instead of the tape's separate addition); else `dx` is overwritten.
pub struct GradsInto<'a, T: ?Sized = [f32]> {
    pub grads: LayerGrads<'a, T>,
    pub add_dx: bool,
}

impl<'a, T: ?Sized> From<LayerGrads<'a, T>> for GradsInto<'a, T> {
    /// Gradients to overwrite.
    fn from(grads: LayerGrads<'a, T>) -> Self {
        GradsInto { grads, add_dx: false }
    }
}

/// A group norm over `n` images of `c` channels of `plane = H·W` pixels, in `groups` groups, with `eps` inside the
/// square root, followed by a SiLU when `silu` (fused: the pre-SiLU value is never stored).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormDesc {
    pub n: usize,
    pub c: usize,
    pub plane: usize,
    pub groups: usize,
    pub eps: f32,
    pub silu: bool,
}

impl NormDesc {
    /// Values per (image, group): `c/groups · plane`.
    pub fn group_len(&self) -> usize {
        self.c / self.groups * self.plane
    }
}

/// A linear layer `y = x Wᵀ + b` over `batch` rows: `x: [batch, fin]`, `w: [fout, fin]`, `y: [batch, fout]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearDesc {
    pub batch: usize,
    pub fin: usize,
    pub fout: usize,
}

/// `n` images of `c` channels of `plane` pixels each: `[n, c, plane]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planes {
    pub n: usize,
    pub c: usize,
    pub plane: usize,
}

/// Two image batches joined along channels: `a: [n, ca, plane]` and `b: [n, cb, plane]` make `[n, ca + cb, plane]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConcatDesc {
    pub n: usize,
    pub ca: usize,
    pub cb: usize,
    pub plane: usize,
}

/// 2x2 max pooling with stride 2 of `planes` planes of `h x w` into `[planes, h/2, w/2]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolDesc {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
}

impl PoolDesc {
    /// Pooled values: `planes · (h/2) · (w/2)`.
    pub fn out_len(&self) -> usize {
        self.planes * (self.h / 2) * (self.w / 2)
    }
}

/// `n` rows of logits over `classes` classes: `[n, classes]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogitsDesc {
    pub n: usize,
    pub classes: usize,
}
