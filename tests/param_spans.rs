//! Parameter spans (`Params::add_span`): parameters a model reads as one tensor, as the UNet reads its ResBlocks'
//! time projections. They are placed end to end in every arena, read through one view (a stacked copy on the CPU),
//! packed as one weight, and their gradient is handed back to each member, in place in a gradient arena.

use ddpm::autograd::Tape;
use ddpm::backend::{Backend, Cpu, Gpu, Precision};
use ddpm::gpu::emu::Emulator;
use ddpm::params::{GradStore, ParamId, Params, SpanId};
use ddpm::Tensor;

/// Values in [-1, 1), a fixed function of `(seed, index)`.
fn values(seed: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7919 + seed * 104_729) % 2000) as f32 / 1000.0 - 1.0).collect()
}

/// Weights `w1 [6, 8]`, `w2 [10, 8]` and biases `b1 [6]`, `b2 [10]`, registered as `w1, b1, other, w2, b2`, with the
/// spans `(w1, w2)` and `(b1, b2)`; and the same values stacked, as the two parameters `w [16, 8]` and `b [16]`.
fn sets() -> (Params, [SpanId; 2], Params) {
    let (w1, w2, b1, b2) = (values(1, 48), values(2, 80), values(3, 6), values(4, 10));
    let mut p = Params::new();
    let t = |shape: &[usize], v: &[f32]| Tensor::new(shape, v.to_vec()).unwrap();
    let (iw1, ib1) = (p.add("w1", t(&[6, 8], &w1)), p.add("b1", t(&[6], &b1)));
    p.add("other", t(&[3], &values(5, 3)));
    let (iw2, ib2) = (p.add("w2", t(&[10, 8], &w2)), p.add("b2", t(&[10], &b2)));
    let spans = [p.add_span(&[iw1, iw2]), p.add_span(&[ib1, ib2])];
    let mut stacked = Params::new();
    stacked.add("w", t(&[16, 8], &[w1, w2].concat()));
    stacked.add("b", t(&[16], &[b1, b2].concat()));
    (p, spans, stacked)
}

#[test]
fn members_are_placed_end_to_end_and_read_as_one_view() {
    let (p, spans, stacked) = sets();
    // Each span where its first member is registered; the rest in registration order.
    assert_eq!(p.placement(), [0, 3, 1, 4, 2]);
    assert!(p.span_view(spans[0]).unwrap().is_none(), "the CPU's parameters are separate tensors");
    let gpu = Gpu::new(Emulator::new());
    let on_gpu = p.to_backend(&gpu).unwrap();
    let view = on_gpu.span_view(spans[0]).unwrap().expect("a view of the arena");
    assert_eq!(view.shape(), stacked.tensors()[0].shape());
    assert_eq!(view.to_backend(&Cpu).unwrap().data(), stacked.tensors()[0].data(), "the weights' span");
    // b1's 6 words leave a gap before b2 (tensors start at multiples of 4 words): no view, a tape stacks them.
    assert!(on_gpu.span_view(spans[1]).unwrap().is_none(), "a view across a gap");
}

/// `loss = mse(x Wᵀ + b, target)` with `W`, `b` the spans of `p` (or its stacked parameters 0 and 1): the output and
/// every parameter's gradient, on the host.
fn run<B: Backend>(
    p: &Params<B>,
    spans: Option<[SpanId; 2]>,
    store: Option<&GradStore<B>>,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut t = Tape::new(p);
    if let Some(store) = store {
        t = t.with_grad_store(store);
    }
    let (w, b) = match spans {
        Some([w, b]) => (t.param_span(w).unwrap(), t.param_span(b).unwrap()),
        None => (t.param(ParamId(0)), t.param(ParamId(1))),
    };
    let x = t.input_host(Tensor::new(&[4, 8], values(6, 32)).unwrap()).unwrap();
    let y = t.linear(x, w, Some(b)).unwrap();
    let target = t.input_host(Tensor::new(&[4, 16], values(7, 64)).unwrap()).unwrap();
    let out = t.value(y).to_backend(&Cpu).unwrap().data().to_vec();
    let loss = t.mse(y, target).unwrap();
    let grads = t.backward(loss).unwrap();
    (out, grads.0.iter().map(|g| g.to_backend(&Cpu).unwrap().data().to_vec()).collect())
}

/// A linear layer through the spans gives the bits of one through the stacked parameters, output and gradients (each
/// member's gradient is its rows of the stacked one's, `other`'s is zero), on the CPU (the spans stacked by copying),
/// on the emulator in f32 and in bf16 (the weights a view of the arena, packed as one weight, the biases stacked by
/// copying; with a gradient store, whose arena then holds the gradients).
#[test]
fn a_linear_layer_through_spans_equals_one_through_the_stacked_values() {
    let (p, spans, stacked) = sets();
    let check = |(out, grads): (Vec<f32>, Vec<Vec<f32>>), (want_out, want): (Vec<f32>, Vec<Vec<f32>>), what: &str| {
        assert_eq!(out, want_out, "{what}: output");
        let members = [&want[0][..48], &want[1][..6], &[0.0; 3][..], &want[0][48..], &want[1][6..]];
        for (i, (g, w)) in grads.iter().zip(members).enumerate() {
            assert_eq!(&g[..], w, "{what}: gradient of {}", p.name(ParamId(i)));
        }
    };
    check(run(&p, Some(spans), None), run(&stacked, None, None), "CPU");
    for precision in [Precision::Fp32, Precision::Bf16] {
        let gpu = Gpu::new(Emulator::new()).with_precision(precision);
        let (on_gpu, stacked_gpu) = (p.to_backend(&gpu).unwrap(), stacked.to_backend(&gpu).unwrap());
        let want = run(&stacked_gpu, None, None);
        check(run(&on_gpu, Some(spans), None), want.clone(), &format!("emulator {precision:?}"));
        let store = GradStore::zeros_like(&on_gpu).unwrap();
        let got = run(&on_gpu, Some(spans), Some(&store));
        let kept: Vec<Vec<f32>> = store.grads.0.iter().map(|g| g.to_backend(&Cpu).unwrap().data().to_vec()).collect();
        assert_eq!(kept, got.1, "{precision:?}: the store holds the gradients returned");
        check(got, want, &format!("emulator {precision:?}, gradient store"));
    }
}

/// The EMA's weights as a parameter store: on a GPU views of the EMA's arena (one packing launch, the UNet's
/// time-projection spans views as the parameters' are), on the CPU copies; the shadow's values either way.
#[test]
fn the_ema_weights_are_a_store_with_the_parameters_spans() {
    use ddpm::nn::UNetConfig;
    use ddpm::train::{RunConfig, TrainState};
    let config =
        RunConfig { model: UNetConfig { in_ch: 1, base: 8, t_dim: 16, classes: 0 }, ..RunConfig::reference_recipe() };
    let mut host = TrainState::new(config).unwrap();
    // A shadow that differs from the parameters, so that a store of the parameters would not pass.
    for t in host.ema.shadow.iter_mut() {
        *t = Tensor::new(t.shape(), t.data().iter().map(|v| v * 0.5 + 0.25).collect()).unwrap();
    }
    let gpu = Gpu::new(Emulator::new());
    let on_gpu = host.to_backend(&gpu).unwrap();
    for (what, ema) in
        [("CPU", host.ema_params().unwrap()), ("emulator", on_gpu.ema_params().unwrap().to_backend(&Cpu).unwrap())]
    {
        for (i, (got, want)) in ema.tensors().iter().zip(&host.ema.shadow).enumerate() {
            assert_eq!(got.data(), want.data(), "{what}: {}", ema.name(ParamId(i)));
        }
    }
    let ema = on_gpu.ema_params().unwrap();
    assert!(ema.arena().buf().is_some(), "the EMA's weights as views of its arena");
    let spans = on_gpu.model.t_proj;
    assert!(ema.span_view(spans.0).unwrap().is_some() && ema.span_view(spans.1).unwrap().is_some(), "span views");
}
