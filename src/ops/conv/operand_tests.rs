//! Operands under bf16: tensors and gradients written in the layout the tensor-core GEMMs read by the ops that
//! produce them, against converting them.

use super::{BiasSums, ConvOps, Gout};
use crate::backend::Gpu;
use crate::desc::{ConvDesc, ConvGeom, GradsInto, LayerGrads, Planes};
use crate::gpu::Executor;
use crate::ops::testing::{down, gpu_test, out, rand, up};

/// Operands under bf16: a norm_conv2d asked to write its output's operand (`ConvExtra::operand`), a concat
/// (`Tape::concat_with`) and a SiLU (`Tape::unary_with`) give the same output and gradients, to the bit, as their
/// readers (a stride-2 conv and a transposed conv; a conv; two linear layers) converting them (all round the f32
/// values as the conversion does, and pad 12 channels to 16 with zeros as it does), and the tape converts a tensor
/// once for all its readers: 3 conversions in the forward without the written operands, none with them.
fn operands_written_and_shared<E: Executor>(g: &Gpu<E>) {
    use crate::autograd::Tape;
    use crate::gpu::Kernel;
    use crate::ops::conv::{ChanBias, ConvExtra, Norm};
    use crate::params::Params;
    use crate::tensor::Tensor;
    let (n, c, hw, co) = (2, 16, 6, 8);
    let mut p = Params::new();
    let mut add = |name: &str, shape: &[usize], seed: u64| {
        let len = shape.iter().product();
        p.add(name, Tensor::new(shape, rand(seed, len)).unwrap())
    };
    let x = add("x", &[n, c, hw, hw], 50);
    let (gamma, beta, w1) = (add("gamma", &[c], 51), add("beta", &[c], 52), add("w1", &[c, c, 3, 3], 53));
    let (w2, w3, w4) = (add("w2", &[co, c, 3, 3], 54), add("w3", &[c, 6, 4, 4], 55), add("w4", &[co, 12, 3, 3], 56));
    // The transposed conv's 6 channels concatenated with themselves, and the SiLU's 12 features: padded to 16.
    let (v, wl1, wl2) = (add("v", &[n, 12], 57), add("wl1", &[co, 12], 58), add("wl2", &[co, 12], 59));
    let (b1, r1) = (add("b1", &[c], 61), add("r1", &[n, c, hw, hw], 62));
    let params = p.to_backend(g).unwrap();
    let target = Tensor::new(&[n, co, 3, 3], rand(60, n * co * 9)).unwrap();
    let run = |share: bool| {
        let mut t = Tape::new(&params);
        let vars = [x, gamma, beta, w1, w2, w3, w4, v, wl1, wl2, b1, r1].map(|id| t.param(id));
        let [x, gamma, beta, w1, w2, w3, w4, v, wl1, wl2, b1, r1] = vars;
        let counters = g.executor().counters();
        counters.record();
        let extra = ConvExtra { residual: Some(r1), operand: share, ..ConvExtra::default() };
        let y = t.norm_conv2d(x, Norm { gamma, beta, groups: 4, silu: true }, w1, Some(b1), 1, 1, extra).unwrap();
        let u = t.unary_with(crate::ops::unary::UnaryKind::Silu, v, share).unwrap();
        let (l1, l2) = (t.linear(u, wl1, None).unwrap(), t.linear(u, wl2, None).unwrap());
        let z1 = t
            .conv2d(y, w2, None, 2, 1, ConvExtra { chan_bias: Some(ChanBias::of(l2)), ..ConvExtra::default() })
            .unwrap();
        let z2 = t.conv_transpose2d(y, w3, None, 2, 1).unwrap();
        let cat = t.concat_with(z2, z2, share).unwrap();
        let extra = ConvExtra { chan_bias: Some(ChanBias::of(l1)), residual: Some(z1), operand: false };
        let out = t.conv2d(cat, w4, None, 4, 1, extra).unwrap();
        let conversions = counters.take_log().iter().filter(|l| l.kernel == Kernel::NchwToNhwcBf16).count();
        let target = t.input_host(target.clone()).unwrap();
        let loss = t.mse(out, target).unwrap();
        let bits = |b: &E::Buf| down(g, b).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let out = bits(t.value(out).buf());
        let grads = t.backward(loss).unwrap();
        (out, grads.0.iter().map(|v| bits(v.buf())).collect::<Vec<_>>(), conversions)
    };
    let ((out, grads, shared), (out_ref, grads_ref, converted)) = (run(true), run(false));
    assert!(out == out_ref, "output differs with the written operands");
    for (i, (got, want)) in grads.iter().zip(&grads_ref).enumerate() {
        assert!(
            got == want,
            "gradient of {} differs with the written operands",
            params.name(crate::params::ParamId(i))
        );
    }
    assert_eq!((shared, converted), (0, 3), "forward conversions with and without the written operands");
}
gpu_test!(operands_written_and_shared, crate::backend::Precision::Bf16);

/// A conv's and a transposed conv's backward asked for the input gradient's operand (`Gout::want_dx_operand`) write
/// dx as without it (to the bit, plain and adding to a gradient already there), its operand as converting dx makes
/// it (to the bit), and per-block column sums whose rows add up to dx's channel sums. Each row is a tree of depth 8
/// over a block's pixels (4 values a thread, 3 shuffle levels, the two row halves), so with the rows added in f64
/// the error is at most 8·2⁻²⁴·Σ|terms| per channel, checked as 1e-6·Σ|terms|. Shapes: a 3x3 stride-2 conv on
/// 33x33 (its input gradient in four classes of 17x17 to 16x16 pixels: the grid's blocks beyond a smaller class's
/// rows write zero sums), a 1x1 one (three classes meeting no tap, still written), and the UNet's 4x4 stride-2
/// transposed conv.
fn dx_operand_written_by_the_gather<E: Executor>(g: &Gpu<E>) {
    let n = 2;
    for (c, hw, k, pad, co, transposed) in [(16, 33, 3, 1, 24, false), (8, 6, 1, 0, 16, false), (16, 8, 4, 1, 8, true)]
    {
        let geom = ConvGeom::new(c, hw, hw, k, 2, pad).unwrap();
        let (out_plane, in_plane) = (geom.h * geom.w, geom.oh * geom.ow);
        // A conv maps [c, h, w] to [co, oh, ow]; the transposed conv maps [co, oh, ow] to [c, h, w].
        let (d, x_len, g_len, dx_planes) = if transposed {
            (
                ConvDesc { n, geom, channels: co },
                n * co * in_plane,
                n * c * out_plane,
                Planes { n, c: co, plane: in_plane },
            )
        } else {
            (
                ConvDesc { n, geom, channels: co },
                n * c * out_plane,
                n * co * in_plane,
                Planes { n, c, plane: out_plane },
            )
        };
        let what = format!("{} c{c} co{co} k{k}", if transposed { "transposed" } else { "conv" });
        let (xb, wb, gb) = (up(g, &rand(70, x_len)), up(g, &rand(71, co * c * k * k)), up(g, &rand(72, g_len)));
        let acc = rand(73, x_len);
        for adding in [false, true] {
            let run = |want: bool| {
                let mut dx = if adding { up(g, &acc) } else { out(g, x_len) };
                let mut gout = Gout { want_dx_operand: want, ..Gout::of(&gb) };
                let grads = GradsInto { grads: LayerGrads { dx: Some(&mut dx), dw: None }, add_dx: adding };
                let sums = BiasSums::default();
                match transposed {
                    true => g.conv_transpose2d_backward_with(&d, (&xb, &wb, &mut gout), None, grads, sums),
                    false => g.conv2d_backward_with(&d, (Some(&xb), &wb, &mut gout), None, grads, sums),
                }
                .unwrap();
                (down(g, &dx), gout.dx_operand)
            };
            let ((plain, none), (with, op)) = (run(false), run(true));
            assert!(none.is_none(), "{what}: an operand not asked for");
            let op = op.expect("an operand under bf16");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&with), bits(&plain), "{what} adding={adding}: dx differs with its operand written");
            let converted = g.operand(&up(g, &with), dx_planes).unwrap().unwrap();
            let (got_op, want_op) = (down(g, &op.operand.buf.buf), down(g, &converted.buf.buf));
            assert_eq!(bits(&got_op), bits(&want_op), "{what} adding={adding}: dx's operand differs from converting");
            let sums = op.sums.expect("channel sums");
            assert!(!sums.per_image, "{what}: per-block sums called per-image");
            let rows = down(g, &sums.buf);
            let dc = dx_planes.c;
            for ch in 0..dc {
                let got: f64 = (0..sums.rows).map(|r| rows[r * dc + ch] as f64).sum();
                let terms = (0..n).flat_map(|i| with[(i * dc + ch) * dx_planes.plane..][..dx_planes.plane].iter());
                let (want, abs) = terms.fold((0f64, 0f64), |(s, a), &v| (s + v as f64, a + v.abs() as f64));
                let bound = 1e-6 * abs;
                assert!((got - want).abs() <= bound, "{what} adding={adding} channel {ch}: sums {got} vs {want}");
            }
        }
    }
}
gpu_test!(dx_operand_written_by_the_gather, crate::backend::Precision::Bf16);

/// A split asked for its parts' operands writes the parts as without them (to the bit), each operand as converting
/// its part makes it (to the bit, the 12-channel part's padding to 16 included), and each part's per-image channel
/// sums (one block sum of 35 values each: abs 1e-5 and rel 1e-5).
fn split_writes_operands<E: Executor>(g: &Gpu<E>) {
    use crate::backend::ReduceOps;
    use crate::desc::ConcatDesc;
    let d = ConcatDesc { n: 2, ca: 8, cb: 12, plane: 35 };
    let cat = up(g, &rand(80, d.n * (d.ca + d.cb) * d.plane));
    let bits = |b: &E::Buf| down(g, b).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let ([a, b], ops) = g.split_with_operands(d, &cat, [true, true]).unwrap();
    let (pa, pb) = g.split(d, &cat).unwrap();
    assert_eq!((bits(&a), bits(&b)), (bits(&pa), bits(&pb)), "the parts differ with their operands written");
    for ((part, c), op) in [(&a, d.ca), (&b, d.cb)].into_iter().zip(ops) {
        let op = op.expect("an operand under bf16");
        let planes = Planes { n: d.n, c, plane: d.plane };
        let converted = g.operand(part, planes).unwrap().unwrap();
        assert_eq!(
            bits(&op.operand.buf.buf),
            bits(&converted.buf.buf),
            "{c} channels: operand differs from converting"
        );
        let sums = op.sums.filter(|s| s.per_image && s.rows == d.n).expect("per-image sums");
        let mut want = out(g, d.n * c);
        g.channel_sums(planes, part, true, &mut want).unwrap();
        crate::ops::testing::close(&down(g, &sums.buf), &down(g, &want), 1e-5, 1e-5, &format!("{c} channels: sums"));
    }
}
gpu_test!(split_writes_operands, crate::backend::Precision::Bf16);

/// The host's bf16 rounding (`mma::bf16_bits`, mirroring the kernels' `f32_to_bf16`) against the `half` crate's, an
/// independent implementation, on ties both ways, the largest finite values (which round to infinity), subnormals,
/// infinities and NaN (quiet either way); and an operand uploaded from the host equal to the device's conversion of
/// the same values, to the bit (5 channels padded to 8, 4 pixels, 3 images).
fn uploaded_operand_equals_the_converted<E: Executor>(g: &Gpu<E>) {
    let tie = |m: u32| f32::from_bits(0x3f80_0000 | m << 15);
    let mut special = vec![0.0, -0.0, tie(1), tie(3), -tie(1), f32::MAX, -f32::MAX, 1e-40, -3e-39];
    special.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::from_bits(0x7f80_0001)]);
    for v in special.iter().copied().chain(rand(90, 1000)) {
        let (got, want) = (super::mma::bf16_bits(v), half::bf16::from_f32(v).to_bits());
        let nan = half::bf16::from_bits(got).is_nan() && half::bf16::from_bits(want).is_nan();
        assert!(got == want || nan, "bf16 of {v:e} ({:#x}): {got:#x}, half makes {want:#x}", v.to_bits());
        assert!(!v.is_nan() || got & 0x40 != 0, "NaN {:#x} rounds to a signalling NaN", v.to_bits());
    }
    let planes = Planes { n: 3, c: 5, plane: 4 };
    let mut values = rand(91, 60);
    values[..special.len()].copy_from_slice(&special);
    let bits = |b: &E::Buf| down(g, b).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let uploaded = g.upload_operand(&values, planes).unwrap().expect("an operand under bf16");
    let converted = g.operand(&up(g, &values), planes).unwrap().unwrap();
    assert_eq!(bits(&uploaded.buf.buf), bits(&converted.buf.buf), "operand made on the host");
}
gpu_test!(uploaded_operand_equals_the_converted, crate::backend::Precision::Bf16);
