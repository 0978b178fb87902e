//! Row-major single-precision matrix multiply on top of the `gemm` crate.

/// A row-major matrix operand: `data` holds the *stored* matrix, row after row; `transposed` means the operand is
/// the transpose of what is stored; `ld`, when set, is the distance between stored rows (default: the stored row
/// length), so an operand can be a block of columns of a wider matrix.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub transposed: bool,
    pub ld: Option<usize>,
}

impl<'a> Mat<'a> {
    /// The stored matrix itself.
    pub fn n(data: &'a [f32]) -> Self {
        Mat { data, transposed: false, ld: None }
    }
    /// The transpose of the stored matrix.
    pub fn t(data: &'a [f32]) -> Self {
        Mat { data, transposed: true, ld: None }
    }
    /// The same operand with its stored rows `ld` floats apart.
    pub fn ld(self, ld: usize) -> Self {
        Mat { ld: Some(ld), ..self }
    }
    /// `(row stride, column stride)` of the operand as the logical `rows x cols` matrix (both ≥ 1), and the
    /// number of floats it spans.
    fn layout(&self, rows: usize, cols: usize) -> (isize, isize, usize) {
        let (stored_rows, stored_cols) = if self.transposed { (cols, rows) } else { (rows, cols) };
        let ld = self.ld.unwrap_or(stored_cols);
        let span = (stored_rows - 1) * ld + stored_cols;
        if self.transposed {
            (1, ld as isize, span)
        } else {
            (ld as isize, 1, span)
        }
    }
}

/// `C[m,n] = A[m,k] · B[k,n]` for `mnk = (m, n, k)` (or `C += A·B` when `accumulate`), all row-major.
///
/// A stored untransposed is `m x k`, transposed it is stored `k x m`; likewise B is `k x n` or stored `n x k`
/// (each with rows `ld` apart when set).
/// `threads > 1` lets the GEMM itself use rayon (for single-image work); batch-parallel callers pass 1.
pub fn sgemm(mnk: (usize, usize, usize), a: Mat, b: Mat, c: &mut [f32], accumulate: bool, threads: usize) {
    let (m, n, k) = mnk;
    sgemm_strided((m, n, k), a, b, (c, (n as isize, 1)), accumulate, threads)
}

/// [`sgemm`] writing `C` transposed: `c` holds `Cᵀ`, an `n x m` row-major matrix whose rows are `ldc ≥ m`
/// floats apart (so `Cᵀ` can be a block of columns of a wider matrix).
///
/// The same product with the roles of the dimensions swapped can be much faster in the `gemm` crate: for the
/// convolutions' shapes (m = channels ≤ 128, n = pixels, k = channels·9), `(col)ᵀ·Wᵀ` into a transposed
/// destination beats `W·col` (docs/history.md).
pub fn sgemm_into_transposed(
    (m, n, k): (usize, usize, usize),
    a: Mat,
    b: Mat,
    (c, ldc): (&mut [f32], usize),
    accumulate: bool,
    threads: usize,
) {
    sgemm_strided((m, n, k), a, b, (c, (1, ldc as isize)), accumulate, threads)
}

/// The shared body: `c_strides` are C's (row, column) strides.
fn sgemm_strided(
    (m, n, k): (usize, usize, usize),
    a: Mat,
    b: Mat,
    (c, c_strides): (&mut [f32], (isize, isize)),
    accumulate: bool,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let c_len = (m - 1) * c_strides.0 as usize + (n - 1) * c_strides.1 as usize + 1;
    assert!(c.len() >= c_len, "sgemm: destination too small");
    if k == 0 {
        if !accumulate {
            let (rs, cs) = (c_strides.0 as usize, c_strides.1 as usize);
            (0..m).for_each(|i| (0..n).for_each(|j| c[i * rs + j * cs] = 0.0));
        }
        return;
    }
    let (a_rs, a_cs, a_len) = a.layout(m, k);
    let (b_rs, b_cs, b_len) = b.layout(k, n);
    assert!(a.data.len() >= a_len && b.data.len() >= b_len, "sgemm: operand too small");
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the asserts above guarantee every (row, col) addressed through these strides is in bounds,
    // and `c` is exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_strides.1,
            c_strides.0,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}
