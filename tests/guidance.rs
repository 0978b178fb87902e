//! Class conditioning and classifier-free guidance on the CPU: the label embedding changes the prediction, the
//! guided denoiser at w = 0 is the plain conditional model bit for bit, at any w it is (1 + w)·ε(x, c) - w·ε(x, ∅)
//! of the two separate predictions, and it refuses what it cannot guide; on the emulator the guided sampler follows
//! the CPU's.

mod common;

use common::assert_close;
use ddpm::autograd::Tape;
use ddpm::backend::Gpu;
use ddpm::diffusion::{initial_noise, sample, Denoiser, SamplerKind, Schedule};
use ddpm::gpu::emu::Emulator;
use ddpm::nn::{GuidedDenoiser, Timesteps, UNet, UNetConfig};
use ddpm::params::Params;
use ddpm::Tensor;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn unet(classes: usize) -> (UNet, Params) {
    let mut params = Params::new();
    let config = UNetConfig { in_ch: 1, base: 8, t_dim: 4, classes };
    let model = UNet::new(config, &mut params, &mut StdRng::seed_from_u64(5)).unwrap();
    (model, params)
}

fn noise(n: usize) -> Tensor {
    let mut rng = StdRng::seed_from_u64(6);
    Tensor::new(&[n, 1, 8, 8], (0..n * 64).map(|_| rng.random_range(-1.0..1.0)).collect()).unwrap()
}

/// ε(x, t, labels) in one plain network call (`None`: the null label).
fn eps(model: &UNet, params: &Params, x: &Tensor, t: &[usize], labels: Option<Vec<u32>>) -> Vec<f32> {
    let mut tape = Tape::inference(params);
    let xv = tape.input(x.clone());
    let y = model.forward_at(&mut tape, xv, Timesteps::Host(t), labels).unwrap();
    tape.value(y).data().to_vec()
}

#[test]
fn guidance_combines_the_conditional_and_unconditional_predictions() {
    let (model, params) = unet(10);
    assert_eq!(
        params.iter().last().map(|(n, t)| (n.to_string(), t.shape().to_vec())),
        Some(("label_emb.weight".into(), vec![11, 16]))
    );
    let (x, t, classes) = (noise(3), [5usize, 100, 900], [2usize, 7, 9]);
    let cond = eps(&model, &params, &x, &t, Some(vec![2, 7, 9]));
    let uncond = eps(&model, &params, &x, &t, None);
    assert_eq!(uncond, eps(&model, &params, &x, &t, Some(vec![10, 10, 10])), "no labels = the null label");
    assert_ne!(cond, uncond, "the label embedding changes the prediction");
    let guided = |w: f32| GuidedDenoiser::new(&model, &params, &classes, w).unwrap().predict_eps(&x, &t).unwrap();
    let plain = guided(0.0);
    assert_eq!(plain.shape(), x.shape());
    assert!(plain.data().iter().zip(&cond).all(|(a, b)| a.to_bits() == b.to_bits()), "w = 0 is the conditional ε");
    for w in [0.5f32, 3.0] {
        let want: Vec<f32> = cond.iter().zip(&uncond).map(|(&c, &u)| (1.0 + w) * c - w * u).collect();
        let got = guided(w);
        assert!(got.data().iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "w = {w}: not eq. 6");
    }
}

#[test]
fn guidance_and_labels_are_refused_where_they_cannot_apply() {
    let (model, params) = unet(10);
    for w in [-1.0f32, f32::NAN, f32::INFINITY] {
        assert!(GuidedDenoiser::new(&model, &params, &[1], w).is_err(), "w = {w}");
    }
    assert!(GuidedDenoiser::new(&model, &params, &[10], 1.0).is_err(), "class 10 of 10");
    let mut den = GuidedDenoiser::new(&model, &params, &[1, 2], 1.0).unwrap();
    assert!(den.predict_eps(&noise(3), &[1, 2, 3]).is_err(), "3 images for 2 classes");
    let (plain, plain_params) = unet(0);
    assert!(GuidedDenoiser::new(&plain, &plain_params, &[1], 1.0).is_err(), "an unconditional model");
    let mut tape = Tape::inference(&plain_params);
    let xv = tape.input(noise(1));
    assert!(plain.forward_at(&mut tape, xv, Timesteps::Host(&[3]), Some(vec![1])).is_err());
}

/// A guided DDIM run (5 steps, eta 0.5, on-device noise) of a conditional tiny UNet on the emulator against the
/// CPU's, from the same x_T: within 1e-4 abs, the budget `emu_model::sampler_matches_cpu` argues for the unguided
/// sampler (w = 3 scales each call's difference from the CPU's by at most 1 + 2w = 7, on 5 steps instead of 20).
#[test]
fn guided_sampling_on_the_emulator_matches_the_cpu() {
    let (model, params) = unet(10);
    let gpu_params = params.to_backend(&Gpu::new(Emulator::new())).unwrap();
    let sched = Schedule::cosine(20).unwrap();
    let kind = SamplerKind::Ddim { steps: 5, eta: 0.5, clamp: true };
    let (x_t, classes) = (initial_noise(3, 2, 1, 8, 8), [4usize, 8]);
    let mut cpu = GuidedDenoiser::new(&model, &params, &classes, 3.0).unwrap();
    let want = sample(&mut cpu, &sched, kind, x_t.clone(), 7, &mut |_, _| {}).unwrap();
    let mut gpu = GuidedDenoiser::new(&model, &gpu_params, &classes, 3.0).unwrap();
    let x_dev = x_t.to_backend(gpu_params.backend()).unwrap();
    let got = sample(&mut gpu as &mut dyn Denoiser<_>, &sched, kind, x_dev, 7, &mut |_, _| {}).unwrap();
    let c = assert_close("guided DDIM", got.to_backend(&ddpm::backend::Cpu).unwrap().data(), want.data(), 1e-4, 0.0);
    eprintln!("guided DDIM on the emulator: max abs {:.2e}", c.max_abs);
}

/// The guided denoiser with its `guided()` hidden: the plain DDIM step then follows the network's noise.
struct Unmarked<'a>(GuidedDenoiser<'a>);

impl Denoiser for Unmarked<'_> {
    fn predict_eps(&mut self, x: &Tensor, t: &[usize]) -> ddpm::Result<Tensor> {
        self.0.predict_eps(x, t)
    }
}

/// A guided DDIM with the clamp follows the noise re-derived from the clamped x̂0 (GLIDE's step), so it differs
/// from the reference's step on the same predictions where the clamp binds; without the clamp there is nothing to
/// re-derive and the two agree to the bit.
#[test]
fn guided_ddim_rederives_the_noise_where_the_clamp_binds() {
    let (model, params) = unet(10);
    let sched = Schedule::linear(50, 1e-4, 0.02).unwrap();
    let (x_t, classes) = (initial_noise(3, 2, 1, 8, 8), [4usize, 8]);
    let run = |marked: bool, clamp: bool| {
        let kind = SamplerKind::Ddim { steps: 5, eta: 0.0, clamp };
        let den = GuidedDenoiser::new(&model, &params, &classes, 3.0).unwrap();
        assert!(den.guided());
        let x = x_t.clone();
        let out = if marked {
            sample(&mut { den }, &sched, kind, x, 7, &mut |_, _| {})
        } else {
            sample(&mut Unmarked(den), &sched, kind, x, 7, &mut |_, _| {})
        };
        out.unwrap().into_data()
    };
    assert_ne!(run(true, true), run(false, true), "the guided clamped step should re-derive its noise");
    assert_eq!(run(true, false), run(false, false), "without the clamp the steps are the same");
}
