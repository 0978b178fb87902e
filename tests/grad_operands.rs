//! Gradients' operands under bf16: an op that makes a gradient a conv's backward reads writes that gradient's
//! bf16 operand (and its per-image sums) with it, and the tape hands it to every reader of the gradient, dropping it
//! when anything is added to the gradient afterwards.

use ddpm::autograd::Tape;
use ddpm::backend::{Backend, Cpu, Gpu, Precision};
use ddpm::gpu::emu::Emulator;
use ddpm::gpu::{Executor, Kernel};
use ddpm::ops::conv::{ChanBias, ConvExtra, Norm};
use ddpm::params::Params;
use ddpm::Tensor;

/// Values in [-1, 1), a fixed function of `(seed, index)`.
fn values(seed: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7919 + seed * 104_729) % 2000) as f32 / 1000.0 - 1.0).collect()
}

/// The largest `|got - want|`, infinite where either is NaN (which `f32::max` would skip).
fn worst_error(got: &[f32], want: &[f32]) -> f32 {
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) })
}

/// A net's backward: every parameter's gradient, and what `count` returns after it (called before it, too).
type Net<B> = fn(&Params<B>, &dyn Fn() -> Option<usize>) -> (Vec<Vec<f32>>, Option<usize>);

/// Parameters `shapes` filled from `seed` (GroupNorm's γ about 1, the rest small), their gradients through `net` in
/// bf16 on the emulator against the f32 CPU's, each within 1.5% of its largest magnitude (the first test says why):
/// the emulator's gradients, and the conversions its backward made.
fn bf16_against_cpu(
    shapes: &[(&str, Vec<usize>)],
    seed: usize,
    (cpu, emu): (Net<Cpu>, Net<Gpu<Emulator>>),
    what: &str,
) -> (Vec<Vec<f32>>, Option<usize>) {
    let mut p = Params::new();
    for (i, (name, shape)) in shapes.iter().enumerate() {
        let len = shape.iter().product();
        let (scale, offset) = if name.starts_with('g') { (0.5, 1.0) } else { (0.3, 0.0) };
        let data = values(seed + i, len).into_iter().map(|v| v * scale + offset).collect();
        p.add(name, Tensor::new(shape, data).unwrap());
    }
    let (want, _) = cpu(&p, &|| None);
    let gpu = Gpu::new(Emulator::new()).with_precision(Precision::Bf16);
    let counters = gpu.executor().counters();
    let (got, conversions) = emu(&p.to_backend(&gpu).unwrap(), &|| {
        let log = counters.take_log();
        counters.record();
        Some(log.iter().filter(|l| l.kernel == Kernel::NchwToNhwcBf16).count())
    });
    for ((name, _), (got, want)) in shapes.iter().zip(got.iter().zip(&want)) {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = worst_error(got, want);
        assert!(worst <= 0.015 * scale, "{what}{name}: bf16 gradient {worst:e} from the f32 CPU's (largest {scale:e})");
    }
    (got, conversions)
}

/// A small net with each way a gradient's operand is made and read, and its parameters:
/// `h0 = conv(x)`; `r = conv1x1(silu(h0))`; `l = linear(silu(linear(v)))`; `h1 = conv(silu(norm(h0))) + l`
/// (per-image channel bias);
/// `s = conv1x1(r)`; `t2 = conv1x1(silu(s))` (12 channels); `y = conv(silu(norm(h1))) + s` (residual);
/// loss = mse([y, t2], target).
/// Backward, in reverse order: the concat's backward writes y's and t2's gradients' operands (t2's padded to 16
/// channels); y's is handed to the residual s, then dropped when the SiLU's gradient is added to s's, so s's conv
/// converts it; GroupNorm's backward writes h1's gradient's operand, with its per-image sums, which are l's
/// gradient, with theirs; the SiLU's backward writes its input's, for the first linear layer's; s's input-gradient
/// GEMM writes r's; h0's gradient is made by GroupNorm's backward and then by the other SiLU's, which no conv made:
/// h0's conv converts it.
/// Returns every parameter's gradient and the conversions the backward made.
fn run<B: Backend>(params: &Params<B>, count: &dyn Fn() -> Option<usize>) -> (Vec<Vec<f32>>, Option<usize>) {
    let mut t = Tape::new(params);
    let p: Vec<_> = (0..params.len()).map(|i| t.param(ddpm::params::ParamId(i))).collect();
    let [w0, b0, wr, br, v, wa, wl, g1, be1, w1, b1, ws, wt, bt, g2, be2, w2, b2] = p[..] else {
        panic!("18 parameters")
    };
    let (n, hw) = (2, 6);
    let x = t.input_host(Tensor::new(&[n, 8, hw, hw], values(1, n * 8 * hw * hw)).unwrap()).unwrap();
    let h0 = t.conv2d(x, w0, Some(b0), 1, 1, ConvExtra::default()).unwrap();
    let q = t.silu(h0).unwrap();
    let r = t.conv2d(q, wr, Some(br), 1, 0, ConvExtra::default()).unwrap();
    let a = t.linear(v, wa, None).unwrap();
    let u = t.silu(a).unwrap();
    let l = t.linear(u, wl, None).unwrap();
    let norm1 = Norm { gamma: g1, beta: be1, groups: 4, silu: true };
    let extra = ConvExtra { chan_bias: Some(ChanBias::of(l)), ..ConvExtra::default() };
    let h1 = t.norm_conv2d(h0, norm1, w1, Some(b1), 1, 1, extra).unwrap();
    let s = t.conv2d(r, ws, None, 1, 0, ConvExtra::default()).unwrap();
    let m = t.silu(s).unwrap();
    let t2 = t.conv2d(m, wt, Some(bt), 1, 0, ConvExtra::default()).unwrap();
    let norm2 = Norm { gamma: g2, beta: be2, groups: 4, silu: true };
    let extra = ConvExtra { residual: Some(s), ..ConvExtra::default() };
    let y = t.norm_conv2d(h1, norm2, w2, Some(b2), 1, 1, extra).unwrap();
    let cat = t.concat(y, t2).unwrap();
    let target = t.input_host(Tensor::new(&[n, 28, hw, hw], values(2, n * 28 * hw * hw)).unwrap()).unwrap();
    let loss = t.mse(cat, target).unwrap();
    count();
    let grads = t.backward(loss).unwrap();
    let conversions = count();
    (grads.0.into_iter().map(|g| g.to_host().unwrap().data().to_vec()).collect(), conversions)
}

/// The bf16 gradients on the emulator against the f32 CPU's, each within 1.5% of its largest magnitude: bf16
/// operands (8-bit mantissas, 2^-9 relative each) perturb every product by about 2^-8 and these sums of up to
/// 16·9·72 products by a similar fraction of their largest terms (measured: under 0.5%); an operand that is stale
/// (s's without the SiLU's part) or another tensor's is off by its whole size. And the backward converts 2
/// gradients (s's and h0's) where converting each conv's and linear layer's would make 8.
#[test]
fn gradients_operands_are_written_shared_and_dropped_when_added_to() {
    let c = 16;
    let shapes: [(&str, Vec<usize>); 18] = [
        ("w0", vec![c, 8, 3, 3]),
        ("b0", vec![c]),
        ("wr", vec![c, c, 1, 1]),
        ("br", vec![c]),
        ("v", vec![2, 12]),
        ("wa", vec![12, 12]),
        ("wl", vec![c, 12]),
        ("g1", vec![c]),
        ("be1", vec![c]),
        ("w1", vec![c, c, 3, 3]),
        ("b1", vec![c]),
        ("ws", vec![c, c, 1, 1]),
        ("wt", vec![12, c, 1, 1]),
        ("bt", vec![12]),
        ("g2", vec![c]),
        ("be2", vec![c]),
        ("w2", vec![c, c, 3, 3]),
        ("b2", vec![c]),
    ];
    let (_, conversions) = bf16_against_cpu(&shapes, 10, (run, run), "");
    assert_eq!(conversions, Some(2), "gradients converted in the backward");
}

/// Two ResBlock-like convs whose channel biases are columns of one linear layer's output (as the UNet's time
/// projections are), each conv's output read by a GroupNorm: `l = linear(silu(linear(v)))` `[2, width]` (with a
/// bias, whose gradient sums the f32 values of l's);
/// `h1 = conv(silu(norm(x))) + l[:, 0..16]`; `h2 = conv(silu(norm(h1))) + l[:, 16..32]`; `y = conv(silu(norm(h2)))`;
/// loss = mse(y, target). Returns every parameter's gradient and the conversions the backward made.
fn run_columns<B: Backend>(params: &Params<B>, count: &dyn Fn() -> Option<usize>) -> (Vec<Vec<f32>>, Option<usize>) {
    let mut t = Tape::new(params);
    let p: Vec<_> = (0..params.len()).map(|i| t.param(ddpm::params::ParamId(i))).collect();
    let [v, wa, wl, bl, g1, be1, w1, g2, be2, w2, g3, be3, w3] = p[..] else { panic!("13 parameters") };
    let (n, hw) = (2, 6);
    let x = t.input_host(Tensor::new(&[n, 16, hw, hw], values(3, n * 16 * hw * hw)).unwrap()).unwrap();
    let u = t.linear(v, wa, None).unwrap();
    let u = t.silu(u).unwrap();
    let l = t.linear(u, wl, Some(bl)).unwrap();
    let norm = |gamma, beta| Norm { gamma, beta, groups: 4, silu: true };
    let bias = |start| ConvExtra { chan_bias: Some(ChanBias { var: l, start }), ..ConvExtra::default() };
    let h1 = t.norm_conv2d(x, norm(g1, be1), w1, None, 1, 1, bias(0)).unwrap();
    let h2 = t.norm_conv2d(h1, norm(g2, be2), w2, None, 1, 1, bias(16)).unwrap();
    let y = t.norm_conv2d(h2, norm(g3, be3), w3, None, 1, 1, ConvExtra::default()).unwrap();
    let target = t.input_host(Tensor::new(&[n, 16, hw, hw], values(4, n * 16 * hw * hw)).unwrap()).unwrap();
    let loss = t.mse(y, target).unwrap();
    count();
    let grads = t.backward(loss).unwrap();
    let conversions = count();
    (grads.0.into_iter().map(|g| g.to_host().unwrap().data().to_vec()).collect(), conversions)
}

/// The channel biases' gradient assembled from column blocks under bf16: each GroupNorm's backward writes its
/// block's per-image sums, f32 and operand, straight into the linear layer's output gradient, so the backward
/// converts nothing when the blocks cover every column (`width` 32); with 8 columns no conv reads (`width` 40) the
/// tape zeroes them and the linear layer's backward converts the gradient (one conversion). The gradients against
/// the f32 CPU's as in the test above (1.5% of each one's largest magnitude); the unread columns' weight rows and
/// bias entries get exactly zero.
#[test]
fn channel_bias_columns_are_written_by_group_norms_backward() {
    for (width, conversions) in [(32, 0), (40, 1)] {
        let shapes: [(&str, Vec<usize>); 13] = [
            ("v", vec![2, 12]),
            ("wa", vec![12, 12]),
            ("wl", vec![width, 12]),
            ("bl", vec![width]),
            ("g1", vec![16]),
            ("be1", vec![16]),
            ("w1", vec![16, 16, 3, 3]),
            ("g2", vec![16]),
            ("be2", vec![16]),
            ("w2", vec![16, 16, 3, 3]),
            ("g3", vec![16]),
            ("be3", vec![16]),
            ("w3", vec![16, 16, 3, 3]),
        ];
        let (got, converted) = bf16_against_cpu(&shapes, 30, (run_columns, run_columns), &format!("width {width}, "));
        assert!(got[2][32 * 12..].iter().all(|&g| g == 0.0), "width {width}: unread columns' weight gradient");
        assert!(got[3][32..].iter().all(|&g| g == 0.0), "width {width}: unread columns' bias gradient");
        assert_eq!(converted, Some(conversions), "width {width}: conversions in the backward");
    }
}
