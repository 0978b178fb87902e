//! The losses' GPU kernels against the CPU's.

use super::LossOps;
use crate::backend::{Cpu, Gpu, Memory};
use crate::desc::LogitsDesc;
use crate::gpu::Executor;
use crate::ops::testing::{close, down, gpu_test, out, rand, up};

// MSE: the loss sums 3001 squares in f32 blocks vs f64 on the CPU: rel 1e-5. The gradient is elementwise: exact
// order, rel 1e-6.
fn mse<E: Executor>(g: &Gpu<E>) {
    let n = 3001;
    let (p, t) = (rand(70, n), rand(71, n));
    let (pb, tb, mut dp) = (up(g, &p), up(g, &t), out(g, n));
    let (mut got, mut want) = (out(g, 1), vec![0.0]);
    g.mse(&pb, &tb, &mut got).unwrap();
    Cpu.mse(&p, &t, &mut want).unwrap();
    close(&down(g, &got), &want, 0.0, 1e-5, "mse");
    let mut want = vec![0.0; n];
    Cpu.mse_backward(&p, &t, &vec![0.7], &mut want).unwrap();
    g.mse_backward(&pb, &tb, &up(g, &[0.7]), &mut dp).unwrap();
    close(&down(g, &dp), &want, 0.0, 1e-6, "mse backward");
}
gpu_test!(mse);

// Cross-entropy over 37 rows of 10 logits up to ±8. The row log-sum-exps and the gradient follow the CPU's f32
// order, with expf/logf within 2 ulp on a GPU: rel 1e-6 on lse, abs 1e-8 on dz (entries are ≲ 1/n = 0.03, a few ulp
// of which is ~1e-8). The loss adds the 37 row losses in f32 by one block against the CPU's f64: rel 1e-5.
fn cross_entropy<E: Executor>(g: &Gpu<E>) {
    let d = LogitsDesc { n: 37, classes: 10 };
    let z: Vec<f32> = rand(46, d.n * d.classes).iter().map(|v| 8.0 * v).collect();
    let labels: Vec<u32> = (0..d.n).map(|i| ((i * 7) % d.classes) as u32).collect();
    let (loss, lse) = Cpu.cross_entropy(d, &z, &labels).unwrap();
    let mut dz = vec![0.0; d.n * d.classes];
    Cpu.cross_entropy_backward(d, &z, (&labels, &lse), 0.7, &mut dz).unwrap();
    let (zb, lb) = (up(g, &z), g.upload_indices(&labels).unwrap());
    let (lossb, lseb) = g.cross_entropy(d, &zb, &lb).unwrap();
    close(&down(g, &lossb), &loss, 0.0, 1e-5, "cross_entropy loss");
    close(&down(g, &lseb), &lse, 0.0, 1e-6, "cross_entropy lse");
    let mut dzb = out(g, d.n * d.classes);
    g.cross_entropy_backward(d, &zb, (&lb, &up(g, &lse)), 0.7, &mut dzb).unwrap();
    close(&down(g, &dzb), &dz, 1e-8, 0.0, "cross_entropy backward");
}
gpu_test!(cross_entropy);

/// Under bf16, the MSE's backward asked for the prediction's gradient operand writes dp as without it (to the bit),
/// its operand as converting dp makes it (to the bit, 3 channels padded to 8), and its per-image channel sums (one
/// block sum of 35 values each against `channel_sums`: abs 1e-6 and rel 1e-5 for sums of order 0.01).
fn mse_backward_writes_the_operand<E: Executor>(g: &Gpu<E>) {
    use crate::backend::{ConvOps, ReduceOps};
    use crate::desc::Planes;
    let d = Planes { n: 2, c: 3, plane: 35 };
    let n = d.n * d.c * d.plane;
    let (pb, tb, gl) = (up(g, &rand(72, n)), up(g, &rand(73, n)), up(g, &[0.7]));
    let (mut plain, mut with) = (out(g, n), out(g, n));
    g.mse_backward(&pb, &tb, &gl, &mut plain).unwrap();
    let op = g.mse_backward_with_operand((&pb, &tb, &gl), &mut with, d).unwrap().expect("an operand under bf16");
    let bits = |b: &E::Buf| down(g, b).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&with), bits(&plain), "dp differs with its operand written");
    let converted = g.operand(&plain, d).unwrap().unwrap();
    assert_eq!(bits(&op.operand.buf.buf), bits(&converted.buf.buf), "dp's operand differs from converting");
    let sums = op.sums.filter(|s| s.per_image && s.rows == d.n).expect("per-image sums");
    let mut want = out(g, d.n * d.c);
    g.channel_sums(d, &plain, true, &mut want).unwrap();
    close(&down(g, &sums.buf), &down(g, &want), 1e-6, 1e-5, "dp's per-image sums");
}
gpu_test!(mse_backward_writes_the_operand, crate::backend::Precision::Bf16);
