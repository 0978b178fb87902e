//! The little dense linear algebra FID needs, in f64: products of square matrices and the symmetric
//! eigen-decomposition, from which the square root of a positive semi-definite matrix follows.
//!
//! Matrices are `d × d`, row-major, in a `Vec<f64>`. FID's matrices are covariances of 128 features, so
//! cubic-time textbook algorithms take milliseconds; what matters is accuracy. Cyclic Jacobi is chosen for it:
//! it is backward stable and finds small eigenvalues to high *relative* accuracy, which is what the square root
//! of a nearly singular covariance needs (scipy's `sqrtm`, used by the usual FID code, goes through a complex
//! Schur form instead and can return a spurious imaginary part).

/// `a · b` for `d × d` row-major matrices.
pub fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut c = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            let (brow, crow) = (&b[k * d..(k + 1) * d], &mut c[i * d..(i + 1) * d]);
            crow.iter_mut().zip(brow).for_each(|(c, b)| *c += aik * b);
        }
    }
    c
}

/// The trace `Σ_i a_ii`.
pub fn trace(a: &[f64], d: usize) -> f64 {
    (0..d).map(|i| a[i * d + i]).sum()
}

/// `a = V·diag(λ)·Vᵀ` for a symmetric `a`: returns `(λ, V)` with the eigenvectors in the columns of `V`
/// (row-major), eigenvalues in no particular order.
///
/// Cyclic Jacobi: sweep over every pair `p < q` and apply the plane rotation `J` that zeroes `a_pq`
/// (`A ← Jᵀ A J`, `V ← V J`), with `tan φ = t`, `t² + 2tθ − 1 = 0`, `θ = (a_qq − a_pp)/(2a_pq)`, taking the smaller
/// root so the rotation is at most 45°. Sweeps repeat until the off-diagonal mass is below `1e-30` of the total
/// (rounding level for f64), which takes 6–10 sweeps for a 128 × 128 covariance.
pub fn sym_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), d * d, "sym_eigen: matrix is not {d}x{d}");
    let mut a = a.to_vec();
    let mut v = vec![0.0; d * d];
    (0..d).for_each(|i| v[i * d + i] = 1.0);
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j].powi(2))
            .sum();
        if off <= 1e-30 * total || off == 0.0 {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                rotate_columns(&mut a, d, p, q, c, s);
                rotate_rows(&mut a, d, p, q, c, s);
                rotate_columns(&mut v, d, p, q, c, s);
                // Exact zero where the rotation was built to put one; it stops rounding noise from being chased.
                a[p * d + q] = 0.0;
                a[q * d + p] = 0.0;
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

/// `M ← M J` for the rotation `J` in the `(p, q)` plane (`J_pp = J_qq = c`, `J_pq = s`, `J_qp = −s`).
fn rotate_columns(m: &mut [f64], d: usize, p: usize, q: usize, c: f64, s: f64) {
    for row in m.chunks_exact_mut(d) {
        let (mp, mq) = (row[p], row[q]);
        row[p] = c * mp - s * mq;
        row[q] = s * mp + c * mq;
    }
}

/// `M ← Jᵀ M` for the same rotation.
fn rotate_rows(m: &mut [f64], d: usize, p: usize, q: usize, c: f64, s: f64) {
    for k in 0..d {
        let (mp, mq) = (m[p * d + k], m[q * d + k]);
        m[p * d + k] = c * mp - s * mq;
        m[q * d + k] = s * mp + c * mq;
    }
}

/// The positive semi-definite square root `a^{1/2} = V·diag(√max(λ, 0))·Vᵀ` of a symmetric PSD matrix.
/// Eigenvalues that rounding made slightly negative are clamped to 0.
pub fn sqrt_psd(a: &[f64], d: usize) -> Vec<f64> {
    let (lambda, v) = sym_eigen(a, d);
    let root: Vec<f64> = lambda.iter().map(|&l| l.max(0.0).sqrt()).collect();
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            out[i * d + j] = (0..d).map(|k| v[i * d + k] * root[k] * v[j * d + k]).sum();
        }
    }
    out
}

/// `tr((a·b)^{1/2})` for symmetric PSD `a` and `b`: `a·b` is not symmetric, but it is similar to
/// `a^{1/2}·b·a^{1/2}`, which is, so the trace is `Σ √λ_i` over that matrix's eigenvalues (clamped at 0).
pub fn trace_sqrt_product(a: &[f64], b: &[f64], d: usize) -> f64 {
    let ra = sqrt_psd(a, d);
    let mut m = matmul(&matmul(&ra, b, d), &ra, d);
    // Symmetric in exact arithmetic; make it so in floating point before the symmetric solver sees it.
    for i in 0..d {
        for j in 0..i {
            let avg = 0.5 * (m[i * d + j] + m[j * d + i]);
            m[i * d + j] = avg;
            m[j * d + i] = avg;
        }
    }
    sym_eigen(&m, d).0.iter().map(|&l| l.max(0.0).sqrt()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random orthogonal matrix (Gram–Schmidt on a fixed pseudo-random matrix).
    fn orthogonal(d: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let mut q: Vec<Vec<f64>> = Vec::new();
        while q.len() < d {
            let mut v: Vec<f64> = (0..d).map(|_| next()).collect();
            for u in &q {
                let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            q.push(v.iter().map(|a| a / norm).collect());
        }
        (0..d * d).map(|k| q[k % d][k / d]).collect() // columns are the q vectors
    }

    /// `Q·diag(λ)·Qᵀ`.
    fn with_spectrum(q: &[f64], lambda: &[f64], d: usize) -> Vec<f64> {
        let mut out = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                out[i * d + j] = (0..d).map(|k| q[i * d + k] * lambda[k] * q[j * d + k]).sum();
            }
        }
        out
    }

    #[test]
    fn eigenvalues_of_a_known_spectrum_are_recovered() {
        let d = 40;
        // Spread over 12 orders of magnitude, as in a covariance of features with a few dead directions.
        let lambda: Vec<f64> = (0..d).map(|i| 10f64.powf(2.0 - 12.0 * i as f64 / (d - 1) as f64)).collect();
        let a = with_spectrum(&orthogonal(d, 7), &lambda, d);
        let (mut got, v) = sym_eigen(&a, d);
        got.sort_by(|x, y| y.total_cmp(x));
        // Jacobi's relative accuracy is ~ d·ε·cond of the scaled problem; the reconstruction of `a` from the
        // Gram–Schmidt Q carries ~1e-15 absolute error, so small eigenvalues are held to that absolute level.
        for (g, w) in got.iter().zip(&lambda) {
            assert!((g - w).abs() <= 1e-12 * lambda[0] + 1e-9 * w, "eigenvalue {g} vs {w}");
        }
        // V is orthogonal.
        let vtv = matmul(&(0..d * d).map(|k| v[(k % d) * d + k / d]).collect::<Vec<_>>(), &v, d);
        for i in 0..d {
            for j in 0..d {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((vtv[i * d + j] - want).abs() < 1e-12, "VᵀV[{i},{j}] = {}", vtv[i * d + j]);
            }
        }
    }

    #[test]
    fn sqrt_psd_squares_back_and_clamps_negative_rounding() {
        let d = 16;
        let mut lambda: Vec<f64> = (0..d).map(|i| (i + 1) as f64).collect();
        lambda[0] = -1e-14; // a rank-deficient covariance that rounding pushed below zero
        let a = with_spectrum(&orthogonal(d, 3), &lambda, d);
        let r = sqrt_psd(&a, d);
        let rr = matmul(&r, &r, d);
        let scale = a.iter().fold(0f64, |m, x| m.max(x.abs()));
        for (x, y) in rr.iter().zip(&a) {
            assert!((x - y).abs() < 1e-12 * scale, "R·R differs from A: {x} vs {y}");
        }
    }

    #[test]
    fn trace_sqrt_of_commuting_matrices_is_the_sum_of_root_products() {
        // With a shared eigenbasis, tr((AB)^{1/2}) = Σ √(λ_a λ_b): an answer that needs no matrix square root.
        let d = 24;
        let q = orthogonal(d, 11);
        let la: Vec<f64> = (0..d).map(|i| 0.1 + i as f64).collect();
        let lb: Vec<f64> = (0..d).map(|i| 3.0 / (1.0 + i as f64)).collect();
        let want: f64 = la.iter().zip(&lb).map(|(a, b)| (a * b).sqrt()).sum();
        let got = trace_sqrt_product(&with_spectrum(&q, &la, d), &with_spectrum(&q, &lb, d), d);
        assert!((got - want).abs() < 1e-10 * want, "{got} vs {want}");
    }

    #[test]
    fn trace_sqrt_product_is_symmetric_in_its_arguments() {
        // (AB)^{1/2} and (BA)^{1/2} are transposes of each other, so the traces agree; the code takes the square
        // root of A only, so swapping the arguments takes a different path to the same number.
        let d = 20;
        let a = with_spectrum(&orthogonal(d, 5), &(0..d).map(|i| 1.0 + i as f64).collect::<Vec<_>>(), d);
        let b = with_spectrum(&orthogonal(d, 9), &(0..d).map(|i| 0.5 + (i % 7) as f64).collect::<Vec<_>>(), d);
        let (ab, ba) = (trace_sqrt_product(&a, &b, d), trace_sqrt_product(&b, &a, d));
        assert!((ab - ba).abs() < 1e-10 * ab, "{ab} vs {ba}");
    }
}
