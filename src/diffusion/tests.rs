//! The diffusion kernels on the GPU against the CPU's.

use super::sampler::{ddim_step, ddpm_step, noise_stream};
use super::{DdimCoefs, DdpmCoefs, DiffusionOps, Schedule};
use crate::backend::Gpu;
use crate::gpu::Executor;
use crate::ops::testing::{close, down, gpu_test, out, rand, up};
use crate::rng;
use crate::tensor::Tensor;

// q_sample: the noise is Philox on the device, the same draws as rng::fill_normal; the integer part is exact, and
// logf/sqrtf/cosf are within 2 ulp on a GPU: rel 1e-6 + abs 1e-6 (cos near its zeros).
fn q_sample<E: Executor>(dev: &Gpu<E>) {
    let sched = Schedule::linear(1000, 1e-4, 0.02).unwrap();
    let (batch, per) = (3, 2 * 5 * 7);
    let (seed, stream) = (0x1234_5678_9abc, 7u64 << 33);
    let x0 = Tensor::new(&[batch, 2, 5, 7], rand(80, batch * per)).unwrap();
    let t = [0usize, 499, 999];
    let mut noise = Tensor::zeros(&[batch, 2, 5, 7]);
    rng::fill_normal(seed, stream, noise.data_mut());
    let want = sched.q_sample(&x0, &t, &noise).unwrap();
    let (nb, xt) = dev.q_sample(&sched, &up(dev, x0.data()), &t, (seed, stream)).unwrap();
    close(&down(dev, &nb), noise.data(), 1e-6, 1e-6, "q_sample noise");
    close(&down(dev, &xt), want.data(), 1e-6, 1e-6, "q_sample x_t");
    // A timestep outside the schedule would index past its tables: refused before any launch.
    assert!(dev.q_sample(&sched, &up(dev, x0.data()), &[0, 1000, 2], (seed, stream)).is_err());
}
gpu_test!(q_sample);

// DDPM and DDIM steps with and without on-device noise, same f32 order as the CPU: exact on the emulator; noise
// within 2 ulp on a GPU: abs 1e-6 + rel 1e-6.
fn sampler_steps<E: Executor>(dev: &Gpu<E>) {
    let sched = Schedule::linear(1000, 1e-4, 0.02).unwrap();
    let n = 2 * 7 * 9;
    let (x, eps) = (rand(90, n), rand(91, n));
    let (xb, eb, mut got) = (up(dev, &x), up(dev, &eps), out(dev, n));
    let seed = 42;
    for t in [0usize, 1, 500, 999] {
        let stream = noise_stream(t);
        let mut z = vec![0.0; n];
        rng::fill_normal(seed, stream, &mut z);
        for noisy in [false, true] {
            let mut want = vec![0.0; n];
            ddpm_step(&sched, t, &x, &eps, noisy.then_some(&z[..]), &mut want).unwrap();
            // The CPU drops the noise at t = 0; so does passing None.
            let noise = (noisy && t > 0).then_some((seed, stream));
            dev.ddpm_step(&DdpmCoefs::new(&sched, t).unwrap(), &xb, &eb, noise, &mut got).unwrap();
            close(&down(dev, &got), &want, 1e-6, 1e-6, &format!("ddpm t={t} noisy={noisy}"));
        }
        let (t_prev, eta) = (t.checked_sub(20).filter(|_| t >= 20), 0.7);
        let c = DdimCoefs::new(&sched, t, t_prev, eta).unwrap();
        for noisy in [false, true] {
            let mut want = vec![0.0; n];
            ddim_step(&sched, (t, t_prev, eta), &x, &eps, noisy.then_some(&z[..]), &mut want).unwrap();
            dev.ddim_step(&c, &xb, &eb, noisy.then_some((seed, stream)), &mut got).unwrap();
            close(&down(dev, &got), &want, 1e-6, 1e-6, &format!("ddim t={t} noisy={noisy}"));
        }
    }
}
gpu_test!(sampler_steps);
