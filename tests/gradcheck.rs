//! Finite-difference checks of every op's backward, on small random shapes chosen to be awkward (odd H and W,
//! batch 1 and batches that split unevenly into the kernels' batch chunks, channel counts that are not powers of 2).
//!
//! Each case builds `L = mse(op(inputs), target)` with every input a parameter, so the tape returns dL/d(input),
//! and compares it with the central difference `(L(x+h) - L(x-h)) / 2h` for a sample of elements.
//!
//! Tolerance, argued: the forward runs in f32, so `L` carries a rounding error of about `ε·|L|·√m` for m summed
//! terms (ε = 6e-8; here |L| ≲ 10 and m ≲ 2000, so ≲ 3e-5), which the difference quotient divides by `2h`: with
//! h = 1e-2 that is ≲ 1.5e-3. The truncation error `h²/6·|L'''|` is ≲ 1e-4 for these smooth ops. Hence
//! `|analytic - numeric| <= 2e-3 + 2e-2·|numeric|`. A wrong backward (a missing term, a transposed weight, a
//! wrong stride) is off by O(|gradient|) ≈ 0.1-1, far outside.
//!
//! The classifier's ops fit the same budget: ReLU and max pooling are piecewise linear, so away from their kinks
//! (the inputs keep every value more than h from 0 and from every other value) the difference quotient has
//! no truncation error at all, and the cross-entropy is smooth with bounded derivatives (|L'''| ≲ 1 for softmax
//! probabilities). `--nocapture` prints the largest error of each case.

mod common;

use ddpm::autograd::{Tape, Var};
use ddpm::backend::{Cpu, PoolOps};
use ddpm::desc::PoolDesc;
use ddpm::ops::conv::{ChanBias, ConvExtra, Norm};
use ddpm::params::{ParamId, Params};
use ddpm::{Result, Tensor};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

const H: f32 = 1e-2;
const ATOL: f32 = 2e-3;
const RTOL: f32 = 2e-2;

fn random(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(shape, (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()).unwrap()
}

/// Builds the op's output from the parameter vars.
type Build<'a> = dyn Fn(&mut Tape, &[Var]) -> Result<Var> + 'a;

/// Checks d mse(build(inputs), target) / d input for every input against central differences on up to 40
/// elements per input (the first, the last and random ones in between).
fn gradcheck(name: &str, inputs: Vec<Tensor>, build: &Build<'_>) {
    let mut worst = 0.0f32;
    let mut rng = StdRng::seed_from_u64(7);
    let mut params = Params::new();
    let ids: Vec<ParamId> = inputs.into_iter().enumerate().map(|(i, t)| params.add(&format!("in{i}"), t)).collect();
    let out_shape = {
        let mut tape = Tape::inference(&params);
        let vars: Vec<Var> = ids.iter().map(|&id| tape.param(id)).collect();
        let y = build(&mut tape, &vars).unwrap();
        tape.value(y).shape().to_vec()
    };
    let target = random(&mut rng, &out_shape);
    let loss = |params: &Params| -> f32 {
        let mut tape = Tape::inference(params);
        let vars: Vec<Var> = ids.iter().map(|&id| tape.param(id)).collect();
        let y = build(&mut tape, &vars).unwrap();
        let t = tape.input(target.clone());
        let l = tape.mse(y, t).unwrap();
        tape.value(l).data()[0]
    };
    let grads = {
        let mut tape = Tape::new(&params);
        let vars: Vec<Var> = ids.iter().map(|&id| tape.param(id)).collect();
        let y = build(&mut tape, &vars).unwrap();
        let t = tape.input(target.clone());
        let l = tape.mse(y, t).unwrap();
        tape.backward(l).unwrap()
    };
    for (k, &id) in ids.iter().enumerate() {
        let n = params.get(id).numel();
        let mut idx: Vec<usize> = (0..38.min(n)).map(|_| rng.random_range(0..n)).collect();
        idx.extend([0, n - 1]);
        for i in idx {
            let orig = params.get(id).data()[i];
            let mut perturbed = params.clone();
            perturbed.tensors_mut()[id.0].data_mut()[i] = orig + H;
            let lp = loss(&perturbed);
            perturbed.tensors_mut()[id.0].data_mut()[i] = orig - H;
            let lm = loss(&perturbed);
            let numeric = (lp - lm) / (2.0 * H);
            let analytic = grads.get(id).data()[i];
            assert!(
                (analytic - numeric).abs() <= ATOL + RTOL * numeric.abs(),
                "{name}: d/d input{k}[{i}]: analytic {analytic:.6}, numeric {numeric:.6}"
            );
            worst = worst.max((analytic - numeric).abs());
        }
    }
    eprintln!("{name}: largest |analytic - numeric| {worst:.2e}");
    tight_check(name, &params, &ids, build);
}

/// Step of the tight check's difference quotients (and half of it): below half the 0.03 spacing of [`spread`]
/// inputs, so ReLU and max pooling stay on one linear piece.
const TIGHT_H: f32 = 1e-2;
/// The tight check's tolerance `|analytic - numeric| <= TIGHT_ATOL + TIGHT_RTOL·|numeric|`; see [`tight_check`].
const TIGHT_ATOL: f64 = 4e-4;
const TIGHT_RTOL: f64 = 2e-3;

/// The gradient check tightened until a backward off by 10% fails it.
///
/// The loss is `L = mse(y, t)` with `t = y₀ - (N/2)·r` for r uniform in [-1, 1): at the unperturbed inputs
/// `dL/dy = (2/N)(y₀ - t) = r` (formed in f64 from the f32 y₀ and t, as `w`), so every output carries a weight of
/// order 1 and the gradients are O(1), not O(1/N) as with a random target. The numerical derivative of the
/// linear functional `Σ_i w_i·y_i(x)` (summed in f64 from the f32 outputs) is the Richardson extrapolation
/// `(4·D(h/2) - D(h))/3` of central differences `D(h)`, whose truncation error is O(h⁴) (≈ 1e-8·|y⁽⁵⁾|) and
/// which is exact for ops linear in the perturbed input; each step is the actual f32 perturbation
/// `fl(x ± h) - x`.
///
/// What remains is the f32 rounding of the outputs: each y_i(x ± h) is off by ≲ c·u·|y| (u = 6e-8, c ≲ 10 for the
/// sums here, |y| ≲ 5), the ≲ 100 outputs a single input reaches add these with weights |w| < 1 and random signs
/// (√100·c·u·|y| ≈ 3e-4 at worst, ~3e-6 typically), and Richardson divides by about h/1.5: up to ~5e-4 for the
/// convs (Winograd's transforms round more; measured: 3.5e-4 there, ≤ 2.4e-4 elsewhere, ≤ 6e-5 for the other ops;
/// `--nocapture` prints them). Hence `4e-4 + 2e-3·|numeric|`. The check then asserts that a 10% error in the
/// largest gradient checked would be at least 3x over this threshold, so a backward scaled by 0.9 cannot pass.
fn tight_check(name: &str, params: &Params, ids: &[ParamId], build: &Build<'_>) {
    let mut rng = StdRng::seed_from_u64(17);
    let forward = |p: &Params| -> Vec<f32> {
        let mut tape = Tape::inference(p);
        let vars: Vec<Var> = ids.iter().map(|&id| tape.param(id)).collect();
        let y = build(&mut tape, &vars).unwrap();
        tape.value(y).data().to_vec()
    };
    let y0 = forward(params);
    let (n, shape) = (y0.len(), {
        let mut tape = Tape::inference(params);
        let vars: Vec<Var> = ids.iter().map(|&id| tape.param(id)).collect();
        let y = build(&mut tape, &vars).unwrap();
        tape.value(y).shape().to_vec()
    });
    // A one-element output (mse, cross-entropy) has gradients of order 1/(its inputs) inside; weight it by ~20.
    let scale = if n == 1 { 20.0 } else { 1.0 };
    let r: Vec<f32> = (0..n).map(|_| scale * rng.random_range(-1.0f32..1.0)).collect();
    let target: Vec<f32> = y0.iter().zip(&r).map(|(&y, &r)| y - n as f32 / 2.0 * r).collect();
    let w: Vec<f64> = y0.iter().zip(&target).map(|(&y, &t)| 2.0 * (y as f64 - t as f64) / n as f64).collect();
    let grads = {
        let mut tape = Tape::new(params);
        let vars: Vec<Var> = ids.iter().map(|&id| tape.param(id)).collect();
        let y = build(&mut tape, &vars).unwrap();
        let t = tape.input(Tensor::new(&shape, target.clone()).unwrap());
        let l = tape.mse(y, t).unwrap();
        tape.backward(l).unwrap()
    };
    let proj = |p: &Params| -> f64 { forward(p).iter().zip(&w).map(|(&y, &w)| y as f64 * w).sum() };
    let (mut worst, mut largest, mut max_err, mut failures) = (0.0f64, 0.0f64, 0.0f64, Vec::new());
    for (k, &id) in ids.iter().enumerate() {
        let numel = params.get(id).numel();
        let mut idx: Vec<usize> =
            if numel <= 24 { (0..numel).collect() } else { (0..22).map(|_| rng.random_range(0..numel)).collect() };
        idx.extend([0, numel - 1]);
        let mut q = params.clone();
        for i in idx {
            let x0 = params.get(id).data()[i];
            let mut quotient = |h: f32| {
                let (xp, xm) = (x0 + h, x0 - h);
                q.tensors_mut()[id.0].data_mut()[i] = xp;
                let fp = proj(&q);
                q.tensors_mut()[id.0].data_mut()[i] = xm;
                let fm = proj(&q);
                q.tensors_mut()[id.0].data_mut()[i] = x0;
                (fp - fm) / (xp as f64 - xm as f64)
            };
            let numeric = (4.0 * quotient(TIGHT_H / 2.0) - quotient(TIGHT_H)) / 3.0;
            let analytic = grads.get(id).data()[i] as f64;
            let err = (analytic - numeric).abs();
            if err.is_nan() || err > TIGHT_ATOL + TIGHT_RTOL * numeric.abs() {
                failures.push(format!("d/d input{k}[{i}]: analytic {analytic:.6}, numeric {numeric:.6}"));
            }
            worst = worst.max(err / (TIGHT_ATOL + TIGHT_RTOL * numeric.abs()));
            largest = largest.max(numeric.abs());
            max_err = max_err.max(err);
        }
    }
    eprintln!(
        "{name}: tight check: largest error {max_err:.1e}, {:.0}% of threshold; largest |gradient| {largest:.3}",
        100.0 * worst
    );
    assert!(failures.is_empty(), "{name}: {} gradients off (tight check):\n{}", failures.len(), failures.join("\n"));
    assert!(
        0.1 * largest >= 3.0 * (TIGHT_ATOL + TIGHT_RTOL * largest),
        "{name}: gradients too small ({largest:.2e}) for the tight check to see a 10% error"
    );
}

#[test]
fn conv2d_3x3_pad1_with_bias_odd_sizes() {
    let mut rng = StdRng::seed_from_u64(1);
    for n in [1usize, 3, 10] {
        let inputs = vec![random(&mut rng, &[n, 3, 5, 7]), random(&mut rng, &[6, 3, 3, 3]), random(&mut rng, &[6])];
        gradcheck(&format!("conv2d n={n}"), inputs, &|t, v| {
            t.conv2d(v[0], v[1], Some(v[2]), 1, 1, ConvExtra::default())
        });
    }
}

#[test]
fn conv2d_3x3_winograd_eligible() {
    // 8 -> 9 channels, even sides, 3x3 stride 1 pad 1: the CPU runs the forward, the dx (a conv of gout with the
    // flipped kernel, 9 -> 8 channels) and dW through Winograd F(2x2, 3x3).
    let mut rng = StdRng::seed_from_u64(11);
    let inputs = vec![random(&mut rng, &[2, 8, 4, 6]), random(&mut rng, &[9, 8, 3, 3]), random(&mut rng, &[9])];
    gradcheck("conv2d winograd", inputs, &|t, v| t.conv2d(v[0], v[1], Some(v[2]), 1, 1, ConvExtra::default()));
}

#[test]
fn conv2d_stride2_and_pointwise() {
    let mut rng = StdRng::seed_from_u64(2);
    let inputs = vec![random(&mut rng, &[2, 5, 7, 6]), random(&mut rng, &[3, 5, 3, 3]), random(&mut rng, &[3])];
    gradcheck("conv2d stride 2", inputs, &|t, v| t.conv2d(v[0], v[1], Some(v[2]), 2, 1, ConvExtra::default()));
    let inputs = vec![random(&mut rng, &[3, 6, 3, 5]), random(&mut rng, &[5, 6, 1, 1])];
    gradcheck("conv2d 1x1", inputs, &|t, v| t.conv2d(v[0], v[1], None, 1, 0, ConvExtra::default()));
    let inputs = vec![random(&mut rng, &[1, 2, 6, 5]), random(&mut rng, &[3, 2, 3, 3])];
    gradcheck("conv2d unpadded", inputs, &|t, v| t.conv2d(v[0], v[1], None, 1, 0, ConvExtra::default()));
}

#[test]
fn conv2d_fused_channel_bias_and_residual() {
    let mut rng = StdRng::seed_from_u64(3);
    let inputs = vec![
        random(&mut rng, &[3, 4, 5, 5]),
        random(&mut rng, &[6, 4, 3, 3]),
        random(&mut rng, &[6]),
        random(&mut rng, &[3, 9]),
        random(&mut rng, &[3, 6, 5, 5]),
    ];
    // The channel bias is columns 2..8 of a [3, 9] value: the others' gradient is zero.
    gradcheck("conv2d + chan_bias + residual", inputs, &|t, v| {
        t.conv2d(
            v[0],
            v[1],
            Some(v[2]),
            1,
            1,
            ConvExtra { chan_bias: Some(ChanBias { var: v[3], start: 2 }), residual: Some(v[4]), operand: false },
        )
    });
}

#[test]
fn channel_biases_as_overlapping_columns_of_one_value() {
    let mut rng = StdRng::seed_from_u64(12);
    // Two convs read columns 0..4 and 3..7 of one [2, 7] value (column 3 by both, so its gradient is the sum of
    // theirs), the second with the first's output as its residual.
    let inputs = vec![
        random(&mut rng, &[2, 3, 4, 4]),
        random(&mut rng, &[4, 3, 3, 3]),
        random(&mut rng, &[4, 4, 1, 1]),
        random(&mut rng, &[2, 7]),
    ];
    gradcheck("two convs' channel biases from one value", inputs, &|t, v| {
        let extra =
            |start, residual| ConvExtra { chan_bias: Some(ChanBias { var: v[3], start }), residual, operand: false };
        let a = t.conv2d(v[0], v[1], None, 1, 1, extra(0, None))?;
        t.conv2d(a, v[2], None, 1, 0, extra(3, Some(a)))
    });
}

#[test]
fn conv_transpose2d_k4_s2_p1_and_others() {
    let mut rng = StdRng::seed_from_u64(4);
    for n in [1usize, 3] {
        let inputs = vec![random(&mut rng, &[n, 5, 3, 5]), random(&mut rng, &[5, 3, 4, 4]), random(&mut rng, &[3])];
        gradcheck(&format!("conv_transpose2d k4s2p1 n={n}"), inputs, &|t, v| {
            t.conv_transpose2d(v[0], v[1], Some(v[2]), 2, 1)
        });
    }
    let inputs = vec![random(&mut rng, &[2, 3, 4, 3]), random(&mut rng, &[3, 2, 3, 3])];
    gradcheck("conv_transpose2d k3s1p1", inputs, &|t, v| t.conv_transpose2d(v[0], v[1], None, 1, 1));
}

#[test]
fn group_norm_with_and_without_silu() {
    let mut rng = StdRng::seed_from_u64(5);
    for silu in [false, true] {
        // 6 channels in 3 groups of 2, an odd 3x5 plane; gamma away from 1 so its gradient path is exercised.
        let inputs = vec![random(&mut rng, &[2, 6, 3, 5]), random(&mut rng, &[6]), random(&mut rng, &[6])];
        gradcheck(&format!("group_norm silu={silu}"), inputs, &|t, v| t.group_norm(v[0], v[1], v[2], 3, silu));
    }
}

#[test]
fn norm_conv2d_with_channel_bias_and_residual() {
    let mut rng = StdRng::seed_from_u64(11);
    // x, γ, β (6 channels in 3 groups), the conv's weight and bias, a channel bias and a residual.
    let inputs = vec![
        random(&mut rng, &[2, 6, 4, 5]),
        random(&mut rng, &[6]),
        random(&mut rng, &[6]),
        random(&mut rng, &[4, 6, 3, 3]),
        random(&mut rng, &[4]),
        random(&mut rng, &[2, 4]),
        random(&mut rng, &[2, 4, 4, 5]),
    ];
    gradcheck("norm_conv2d", inputs, &|t, v| {
        let norm = Norm { gamma: v[1], beta: v[2], groups: 3, silu: true };
        t.norm_conv2d(
            v[0],
            norm,
            v[3],
            Some(v[4]),
            1,
            1,
            ConvExtra { chan_bias: Some(ChanBias::of(v[5])), residual: Some(v[6]), operand: false },
        )
    });
}

#[test]
fn silu_linear_concat_mse() {
    let mut rng = StdRng::seed_from_u64(6);
    gradcheck("silu", vec![random(&mut rng, &[3, 7])], &|t, v| t.silu(v[0]));
    let inputs = vec![random(&mut rng, &[3, 5]), random(&mut rng, &[4, 5]), random(&mut rng, &[4])];
    gradcheck("linear", inputs, &|t, v| t.linear(v[0], v[1], Some(v[2])));
    let inputs = vec![random(&mut rng, &[2, 3, 3, 5]), random(&mut rng, &[2, 2, 3, 5])];
    gradcheck("concat", inputs, &|t, v| t.concat(v[0], v[1]));
    // mse itself: the loss of the loss, d/dpred and d/dtarget of mse(mse(a, b), c) through a one-element chain.
    let inputs = vec![random(&mut rng, &[2, 5]), random(&mut rng, &[2, 5])];
    gradcheck("mse", inputs, &|t, v| t.mse(v[0], v[1]));
}

#[test]
fn embedding_lookup_added_to_rows() {
    let mut rng = StdRng::seed_from_u64(9);
    // Row 3 picked three times (its gradient sums three rows), rows 0 and 1 once, row 2 never (gradient 0).
    let labels = [3u32, 0, 3, 1, 3];
    let inputs = vec![random(&mut rng, &[5, 6]), random(&mut rng, &[4, 6])];
    gradcheck("embed_add", inputs, &|t, v| t.embed_add(v[0], v[1], labels.to_vec(), labels.len()));
}

#[test]
fn resblock_path_end_to_end() {
    // A tiny UNet-shaped composition: the whole model's gradient through every op at once.
    use ddpm::nn::{UNet, UNetConfig};
    let mut rng = StdRng::seed_from_u64(8);
    let mut params = Params::new();
    let model = UNet::new(UNetConfig { in_ch: 1, base: 8, t_dim: 4, classes: 0 }, &mut params, &mut rng).unwrap();
    let x = random(&mut rng, &[2, 1, 8, 12]);
    let target = random(&mut rng, &[2, 1, 8, 12]);
    let t = [3usize, 700];
    let loss = |p: &Params| -> f32 {
        let mut tape = Tape::inference(p);
        let (xv, tv) = (tape.input(x.clone()), tape.input(target.clone()));
        let y = model.forward(&mut tape, xv, &t).unwrap();
        let l = tape.mse(y, tv).unwrap();
        tape.value(l).data()[0]
    };
    let grads = {
        let mut tape = Tape::new(&params);
        let (xv, tv) = (tape.input(x.clone()), tape.input(target.clone()));
        let y = model.forward(&mut tape, xv, &t).unwrap();
        let l = tape.mse(y, tv).unwrap();
        tape.backward(l).unwrap()
    };
    let mut checked = 0;
    for (k, (name, p)) in params.iter().enumerate() {
        let i = rng.random_range(0..p.numel());
        let mut q = params.clone();
        q.tensors_mut()[k].data_mut()[i] += H;
        let lp = loss(&q);
        q.tensors_mut()[k].data_mut()[i] -= 2.0 * H;
        let lm = loss(&q);
        let numeric = (lp - lm) / (2.0 * H);
        let analytic = grads.0[k].data()[i];
        assert!(
            (analytic - numeric).abs() <= ATOL + RTOL * numeric.abs(),
            "{name}[{i}]: analytic {analytic}, numeric {numeric}"
        );
        checked += 1;
    }
    assert_eq!(checked, params.len());
}

/// A tensor of `shape` whose values are a random permutation of `0.03·(i - ⌊numel/2⌋) + 0.015`: 0.03 apart and at
/// least 0.015 from 0, both more than h, so no perturbation by ±h changes a window's maximum or a ReLU's side.
fn spread(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut values: Vec<f32> = (0..n).map(|i| 0.03 * (i as f32 - (n / 2) as f32) + 0.015).collect();
    values.shuffle(rng);
    Tensor::new(shape, values).unwrap()
}

#[test]
fn relu_max_pool_flatten() {
    let mut rng = StdRng::seed_from_u64(9);
    gradcheck("relu", vec![spread(&mut rng, &[3, 2, 5, 3])], &|t, v| t.relu(v[0]));
    // Odd H and W: the last row and column are in no window, so their gradient must be exactly 0.
    for shape in [[2, 3, 5, 7], [1, 2, 4, 6]] {
        gradcheck(&format!("max_pool2d {shape:?}"), vec![spread(&mut rng, &shape)], &|t, v| t.max_pool2d(v[0]));
    }
    gradcheck("flatten", vec![random(&mut rng, &[2, 3, 2, 5])], &|t, v| t.flatten(v[0]));
}

#[test]
fn cross_entropy_against_integer_labels() {
    let mut rng = StdRng::seed_from_u64(10);
    // Logits up to ±3, so the softmax is far from uniform; one row per class and then some, and a single row.
    for (n, classes, labels) in [(6, 4, vec![0, 3, 1, 1, 2, 3]), (1, 10, vec![7])] {
        let logits =
            Tensor::new(&[n, classes], random(&mut rng, &[n, classes]).data().iter().map(|v| 3.0 * v).collect())
                .unwrap();
        gradcheck(&format!("cross_entropy {n}x{classes}"), vec![logits], &|t, v| t.cross_entropy(v[0], &labels));
    }
}

#[test]
fn max_pool2d_routes_ties_to_the_first_maximum_and_propagates_nan() {
    // Windows (row-major): [5, 5, 3, 5] → offset 0; [1, 7, 7, 7] → offset 1 (row 0, column 3); [NaN, 2, 1, 0] → NaN.
    let x = vec![5.0, 5.0, 1.0, 7.0, f32::NAN, 2.0, 3.0, 5.0, 7.0, 7.0, 1.0, 0.0];
    let (mut y, mut dx) = (vec![0.0f32; 3], vec![0.0; 12]);
    let d = PoolDesc { planes: 1, h: 2, w: 6 };
    let argmax = Cpu.max_pool2d_forward(d, &x, &mut y).unwrap();
    assert_eq!((&y[..2], &argmax[..]), (&[5.0, 7.0][..], &[0, 1, 0][..]));
    assert!(y[2].is_nan());
    Cpu.max_pool2d_backward(d, &argmax, &vec![1.0, 2.0, 3.0], &mut dx).unwrap();
    assert_eq!(dx, [1.0, 0.0, 0.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
}
