//! The optimiser's GPU kernels against the CPU's.

use super::{clip_grad_norm, step as step_all, AdamW, Ema, OptimOps};
use crate::backend::{Gpu, Memory};
use crate::gpu::Executor;
use crate::ops::testing::{close, down, gpu_test, rand, up};
use crate::params::{GradStore, Grads, Params};
use crate::tensor::Tensor;
use crate::train::{PlanRow, StepPlan};

/// Two parameter tensors of awkward sizes, and gradients for them.
fn params_and_grads(scale: f32) -> (Params, Grads) {
    let mut p = Params::new();
    p.add("a", Tensor::new(&[3, 37], rand(100, 111)).unwrap());
    p.add("b", Tensor::new(&[1001], rand(101, 1001)).unwrap());
    let g = Grads(vec![
        Tensor::new(&[3, 37], rand(102, 111).iter().map(|v| v * scale).collect()).unwrap(),
        Tensor::new(&[1001], rand(103, 1001).iter().map(|v| v * scale).collect()).unwrap(),
    ]);
    (p, g)
}

// AdamW, three steps: the same f32 operations in the same order (no FMA contraction), so the emulator is exact;
// sqrtf and division are correctly rounded on a GPU too, so abs 0 + rel 1e-6 is slack for the GPU only.
fn adamw<E: Executor>(dev: &Gpu<E>) {
    let (mut params, grads) = params_and_grads(1.0);
    let mut opt = AdamW::new(&params, 1e-3);
    let zeros = |t: &Tensor| dev.upload(vec![0.0; t.numel()]).unwrap();
    let mut bufs: Vec<_> = params.tensors().iter().map(|t| (up(dev, t.data()), zeros(t), zeros(t))).collect();
    let gbufs: Vec<_> = grads.0.iter().map(|g| up(dev, g.data())).collect();
    for step in 1..=3 {
        let s = opt.scalars(step);
        for ((p, m, v), g) in bufs.iter_mut().zip(&gbufs) {
            dev.adamw_step(&s, p, m, v, g).unwrap();
        }
        opt.step(&mut params, &grads).unwrap();
    }
    for (i, (p, m, v)) in bufs.iter().enumerate() {
        close(&down(dev, p), params.tensors()[i].data(), 0.0, 1e-6, "adamw p");
        close(&down(dev, m), opt.exp_avg[i].data(), 0.0, 1e-6, "adamw m");
        close(&down(dev, v), opt.exp_avg_sq[i].data(), 0.0, 1e-6, "adamw v");
    }
}
gpu_test!(adamw);

// EMA with warm-up over two updates: same f32 order, exact on the emulator.
fn ema<E: Executor>(dev: &Gpu<E>) {
    let (params, grads) = params_and_grads(1.0);
    let mut ema = Ema::new(&params, 0.999, true);
    let mut shadows: Vec<_> = params.tensors().iter().map(|t| up(dev, t.data())).collect();
    // Move the "live" weights so the average has something to do.
    let live: Vec<_> = grads.0.iter().map(|g| up(dev, g.data())).collect();
    let mut moved = Params::new();
    moved.add("a", grads.0[0].clone());
    moved.add("b", grads.0[1].clone());
    for _ in 0..2 {
        let (d, alpha) = ema.scalars();
        for (s, p) in shadows.iter_mut().zip(&live) {
            dev.ema_update(d, alpha, s, p).unwrap();
        }
        ema.update(&moved).unwrap();
    }
    for (s, want) in shadows.iter().zip(&ema.shadow) {
        close(&down(dev, s), want.data(), 0.0, 1e-6, "ema");
    }
}
gpu_test!(ema);

// Global gradient-norm clipping, clipped (norm ~33 > 1) and not (max_norm 1e3). The norm is summed in f32
// blocks vs f64: rel 1e-5 on the norm, the coefficient and the scaled gradients.
fn clip<E: Executor>(dev: &Gpu<E>) {
    for max_norm in [1.0f32, 1e3] {
        let (_, mut grads) = params_and_grads(2.0);
        let mut bufs: Vec<_> = grads.0.iter().map(|g| up(dev, g.data())).collect();
        let mut list: Vec<_> = bufs.iter_mut().collect();
        let got = dev.clip_grad_norm(&mut list, max_norm).unwrap();
        let (total, coef) = clip_grad_norm(&mut grads, max_norm).unwrap();
        close(&[got.0, got.1], &[total, coef], 0.0, 1e-5, "clip total, coef");
        for (b, g) in bufs.iter().zip(&grads.0) {
            close(&down(dev, b), g.data(), 1e-7, 1e-5, "clipped grads");
        }
    }
}
gpu_test!(clip);

// The whole step over arenas (clip, AdamW, EMA in three launches) against the per-tensor kernels it replaces, on
// copies of the same state (a copy's tensors are separate buffers, so it takes the per-tensor path): the same f32
// operations on the same partial sums, so every bit must agree, clipped (norm ~33 > 1) or not (max_norm 1e3). And
// the same step reading its bias corrections and EMA decay from a plan's rows (a captured step's), its statistics
// staged and copied by `plan_advance` to each row's words of a ring.
fn flat_step_equals_per_tensor<E: Executor>(dev: &Gpu<E>) {
    for max_norm in [1.0f32, 1e3] {
        let (params, grads) = params_and_grads(2.0);
        let order = params.placement();
        let flat_state = || {
            let p = params.to_backend(dev).unwrap();
            let opt = AdamW::new(&params, 1e-3).to_backend(dev, &order).unwrap();
            let ema = Ema::new(&params, 0.999, true).to_backend(dev, &order).unwrap();
            let g = GradStore::zeros_like(&p).unwrap();
            (p, opt, ema, g)
        };
        let (mut flat_p, mut flat_opt, mut flat_ema, mut flat_g) = flat_state();
        let (mut plan_p, mut plan_opt, mut plan_ema, mut plan_g) = flat_state();
        // The planned state's own counts are another step's, so that only the plan's rows give the right scalars.
        const AHEAD: u64 = 50;
        (plan_opt.step, plan_ema.updates) = (AHEAD, AHEAD);
        assert!(flat_p.arena().buf().is_some(), "a GPU's parameters are views of one arena");
        let (mut p, mut opt, mut ema, mut g) = (flat_p.clone(), flat_opt.clone(), flat_ema.clone(), flat_g.clone());
        let rows: Vec<PlanRow> = (0..3u64)
            .map(|k| PlanRow {
                first: 0,
                t_stream: 0,
                noise_stream: 0,
                label_stream: 0,
                stats_word: 3 * k as usize,
                adam: opt.scalars(k + 1),
                ema: ema.scalars_at(k),
            })
            .collect();
        let mut plan = StepPlan::new(dev, &rows).unwrap();
        let (mut staged, mut ring) = (up(dev, &[0.0; 3]), up(dev, &[0.0; 9]));
        let mut stats = up(dev, &[0.0; 4]);
        let mut want_ring = Vec::new();
        for step in 0..3 {
            // A different gradient each step, written into every store.
            for (i, host) in grads.0.iter().enumerate() {
                let data: Vec<f32> = host.data().iter().map(|v| v * (1.0 + step as f32)).collect();
                for store in [&mut flat_g, &mut g, &mut plan_g] {
                    dev.copy_into(&up(dev, &data), store.grads.0[i].buf_mut(), 0).unwrap();
                }
            }
            let opt_ema = (&mut flat_opt, &mut flat_ema);
            let flat = step_all(&mut flat_p, &mut flat_g, opt_ema, max_norm, (&mut stats, 1), None);
            assert_eq!(flat.unwrap(), None, "the arenas take the flat path");
            let (total, coef) = step_all(&mut p, &mut g, (&mut opt, &mut ema), max_norm, (&mut stats, 0), None)
                .unwrap()
                .expect("copies take the per-tensor path");
            let s = down(dev, &stats);
            assert_eq!([s[1].to_bits(), s[2].to_bits()], [total.to_bits(), coef.to_bits()], "norm and coefficient");
            let opt_ema = (&mut plan_opt, &mut plan_ema);
            step_all(&mut plan_p, &mut plan_g, opt_ema, max_norm, (&mut staged, 1), Some(&plan)).unwrap();
            dev.advance_plan(&mut plan, &staged, &mut ring).unwrap();
            want_ring.extend([0.0, total, coef].map(f32::to_bits));
        }
        let bits =
            |ts: &[Tensor<Gpu<E>>]| ts.iter().flat_map(|t| down(dev, t.buf())).map(f32::to_bits).collect::<Vec<_>>();
        for (what, other_p, other_opt, other_ema, ahead) in
            [("flat", &flat_p, &flat_opt, &flat_ema, 0), ("planned", &plan_p, &plan_opt, &plan_ema, AHEAD)]
        {
            assert!(bits(other_p.tensors()) == bits(p.tensors()), "{what}: parameters differ (max_norm {max_norm})");
            assert!(bits(&other_opt.exp_avg) == bits(&opt.exp_avg), "{what}: first moments differ");
            assert!(bits(&other_opt.exp_avg_sq) == bits(&opt.exp_avg_sq), "{what}: second moments differ");
            assert!(bits(&other_ema.shadow) == bits(&ema.shadow), "{what}: EMA differs");
            assert_eq!((other_opt.step - ahead, other_ema.updates - ahead), (opt.step, ema.updates));
        }
        let ring: Vec<u32> = down(dev, &ring).into_iter().map(f32::to_bits).collect();
        assert_eq!(ring, want_ring, "the staged statistics in each row's words of the ring");
        assert_eq!(plan.rows().remaining(), 0);
        assert!(dev.advance_plan(&mut plan, &staged, &mut ring_of(dev)).is_err(), "a plan past its rows");
    }
}

fn ring_of<E: Executor>(dev: &Gpu<E>) -> E::Buf {
    up(dev, &[0.0; 9])
}
gpu_test!(flat_step_equals_per_tensor);
