//! `ddpm bench --what convs`: every distinct convolution shape of the UNet timed alone, each pass (forward, input
//! gradient, weight gradient) separately, through the backend's [`ConvOps`], so that each can be set against the
//! same shape in PyTorch (`pytorch/conv_bench.py`, the same shapes and JSON fields; `scripts/compare_convs.py` joins
//! the two).

use super::{checks, on_backend, Device};
use anyhow::{bail, Context, Result};
use ddpm::backend::{Backend, Memory};
use ddpm::desc::{ConvDesc, ConvGeom, Epilogue, LayerGrads};
use ddpm::rng;
use std::time::Instant;

/// One distinct conv shape of the UNet and the layers that have it. For a transposed conv, `cin`/`h`/`w` describe
/// its input (as PyTorch's `ConvTranspose2d(cin, cout, k, stride, pad)` applied to `[n, cin, h, w]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub layers: Vec<&'static str>,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub transposed: bool,
    /// Whether training computes this conv's input gradient (not for `in_conv`, whose input is the image).
    pub needs_dx: bool,
}

impl ConvShape {
    /// The first layer's name: what the shape is called in tables and JSON.
    pub fn name(&self) -> &'static str {
        self.layers[0]
    }

    /// The output grid.
    fn out_hw(&self) -> (usize, usize) {
        if self.transposed {
            ((self.h - 1) * self.stride + self.k - 2 * self.pad, (self.w - 1) * self.stride + self.k - 2 * self.pad)
        } else {
            ((self.h + 2 * self.pad - self.k) / self.stride + 1, (self.w + 2 * self.pad - self.k) / self.stride + 1)
        }
    }

    /// Useful FLOPs of one pass at batch `n` (the three passes multiply the same numbers): two per multiply-add
    /// of the conv's GEMM, `2·n·(output pixels)·cout·cin·k²`; for a transposed conv the GEMM of its adjoint,
    /// `2·n·(input pixels)·cin·cout·k²`. Taps over the zero padding count, as the usual FLOP counts have it.
    pub fn flops(&self, n: usize) -> f64 {
        let pixels = if self.transposed { self.h * self.w } else { self.out_hw().0 * self.out_hw().1 };
        2.0 * (n * pixels * self.cin * self.cout * self.k * self.k) as f64
    }

    /// The backend's descriptor: for a conv its own geometry; for a transposed conv the geometry of the conv it
    /// is the adjoint of (from the `[cout, oh, ow]` output back onto the `[h, w]` input grid).
    fn desc(&self, n: usize) -> Result<ConvDesc> {
        let geom = if self.transposed {
            let (oh, ow) = self.out_hw();
            ConvGeom::new(self.cout, oh, ow, self.k, self.stride, self.pad)
        } else {
            ConvGeom::new(self.cin, self.h, self.w, self.k, self.stride, self.pad)
        };
        let geom = geom.with_context(|| format!("{}: the kernel does not fit the input", self.name()))?;
        let channels = if self.transposed { self.cin } else { self.cout };
        Ok(ConvDesc { n, geom, channels })
    }
}

/// The UNet's convs at width `b` (src/nn/unet.rs), in forward order, layers of the same shape merged into the
/// first one's entry.
pub fn unet_convs(b: usize) -> Vec<ConvShape> {
    let (c1, c2, c4) = (b, 2 * b, 4 * b);
    // (layer, cin, cout, input side, k, stride, pad, transposed)
    let all = [
        ("in_conv", 1, c1, 32, 3, 1, 1, false),
        ("down1.conv1", c1, c1, 32, 3, 1, 1, false),
        ("down1.conv2", c1, c1, 32, 3, 1, 1, false),
        ("pool1", c1, c2, 32, 3, 2, 1, false),
        ("down2.conv1", c2, c2, 16, 3, 1, 1, false),
        ("down2.conv2", c2, c2, 16, 3, 1, 1, false),
        ("pool2", c2, c4, 16, 3, 2, 1, false),
        ("mid.conv1", c4, c4, 8, 3, 1, 1, false),
        ("mid.conv2", c4, c4, 8, 3, 1, 1, false),
        ("up2", c4, c2, 8, 4, 2, 1, true),
        ("dec2.conv1", c4, c2, 16, 3, 1, 1, false),
        ("dec2.conv2", c2, c2, 16, 3, 1, 1, false),
        ("dec2.skip", c4, c2, 16, 1, 1, 0, false),
        ("up1", c2, c1, 16, 4, 2, 1, true),
        ("dec1.conv1", c2, c1, 32, 3, 1, 1, false),
        ("dec1.conv2", c1, c1, 32, 3, 1, 1, false),
        ("dec1.skip", c2, c1, 32, 1, 1, 0, false),
        ("out_conv", c1, 1, 32, 3, 1, 1, false),
    ];
    let mut shapes: Vec<ConvShape> = Vec::new();
    for (layer, cin, cout, side, k, stride, pad, transposed) in all {
        let needs_dx = layer != "in_conv";
        let s = ConvShape { layers: vec![layer], cin, cout, h: side, w: side, k, stride, pad, transposed, needs_dx };
        let same = |o: &ConvShape| {
            (o.cin, o.cout, o.h, o.w, o.k, o.stride, o.pad, o.transposed, o.needs_dx)
                == (s.cin, s.cout, s.h, s.w, s.k, s.stride, s.pad, s.transposed, s.needs_dx)
        };
        match shapes.iter_mut().find(|o| same(o)) {
            Some(o) => o.layers.push(layer),
            None => shapes.push(s),
        }
    }
    shapes
}

/// What is timed of a conv.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The output, with the bias fused in (as the UNet's layers have one).
    Forward,
    /// dL/dx from dL/dy.
    InputGrad,
    /// dL/dW from dL/dy and x.
    WeightGrad,
}

impl Pass {
    pub const ALL: [Pass; 3] = [Pass::Forward, Pass::InputGrad, Pass::WeightGrad];

    /// As the JSON and pytorch/conv_bench.py spell it.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::InputGrad => "input_grad",
            Pass::WeightGrad => "weight_grad",
        }
    }
}

/// The median milliseconds of one (shape, pass) at batch `batch`.
pub struct Timing {
    pub shape: ConvShape,
    pub pass: Pass,
    pub batch: usize,
    pub median_ms: f64,
}

/// Runs the benchmark on `device` and prints one JSON line per (shape, pass), or a table, each line as soon as
/// it is measured (so that a run cut short by a time limit still leaves what it measured).
pub fn run(device: &Device, n: usize, base: usize, iters: usize, json: bool) -> Result<()> {
    let shapes = unet_convs(base);
    if matches!(device, Device::Cpu | Device::Emu(_)) {
        // The largest shape's buffers at once (input, output, their gradients, the fp32 path's column matrix).
        let bytes = shapes.iter().map(|s| buffer_words(s, n)).max().unwrap_or(0) as u128 * 4;
        checks::fits_in_memory(&format!("--what convs --batch {n} --base {base}"), bytes)?;
    }
    let (dev, precision) = (device.name(), device.precision().name());
    if !json {
        println!("convs of the UNet at batch {n} on {dev} in {precision}, median of {iters}:");
        println!("{:<12} {:<11} {:>24} {:>11} {:>10}  layers", "name", "pass", "shape", "median ms", "GFLOP/s");
    }
    let mut step_ms = 0.0;
    let mut report = |t: &Timing| {
        let s = &t.shape;
        if json {
            println!(
                "{{\"name\":\"{}\",\"layers\":\"{}\",\"pass\":\"{}\",\"n\":{n},\"cin\":{},\"cout\":{},\"h\":{},\"w\":{},\
                 \"k\":{},\"stride\":{},\"pad\":{},\"transposed\":{},\"precision\":\"{precision}\",\"device\":\"{dev}\",\
                 \"iters\":{iters},\"median_ms\":{:.5},\"gflops\":{:.2}}}",
                s.name(),
                s.layers.join(" "),
                t.pass.name(),
                s.cin,
                s.cout,
                s.h,
                s.w,
                s.k,
                s.stride,
                s.pad,
                s.transposed,
                t.median_ms,
                gflops(t)
            );
        } else {
            let shape = format!(
                "{}{}x{}x{}->{} k{}s{}",
                if s.transposed { "T " } else { "" },
                s.cin,
                s.h,
                s.w,
                s.cout,
                s.k,
                s.stride
            );
            let (name, pass, ms, layers) = (s.name(), t.pass.name(), t.median_ms, s.layers.join(" "));
            println!("{name:<12} {pass:<11} {shape:>24} {ms:>11.4} {:>10.1}  {layers}", gflops(t));
        }
        step_ms += t.median_ms * s.layers.len() as f64;
    };
    on_backend!(device, |b| time_all(b, &shapes, n, iters, &mut report))?;
    if !json {
        // Each shape's passes times the number of layers that have it.
        println!("sum over the UNet's layers (the convs of one training step): {step_ms:.3} ms");
    }
    Ok(())
}

/// FLOPs per second in units of 1e9.
fn gflops(t: &Timing) -> f64 {
    t.shape.flops(t.batch) / (t.median_ms * 1e-3) / 1e9
}

/// Words the largest buffers of one shape take: x, y, dy, dx, and the column matrix of the fp32 GPU path.
fn buffer_words(s: &ConvShape, n: usize) -> usize {
    let (oh, ow) = s.out_hw();
    let (x, y) = (n * s.cin * s.h * s.w, n * s.cout * oh * ow);
    let col = n * s.cin.max(s.cout) * s.k * s.k * s.h.max(oh) * s.w.max(ow);
    2 * x + 2 * y + col
}

/// Times every (shape, pass) on `backend`, handing each result to `report` as soon as it is measured.
fn time_all<B: Backend>(
    backend: &B,
    shapes: &[ConvShape],
    n: usize,
    iters: usize,
    report: &mut dyn FnMut(&Timing),
) -> Result<()> {
    for (i, s) in shapes.iter().enumerate() {
        let bufs = Buffers::new(backend, s, n, i as u64)?;
        for pass in Pass::ALL {
            if pass == Pass::InputGrad && !s.needs_dx {
                continue;
            }
            let median_ms = time_pass(backend, s, n, &bufs, pass, iters)
                .with_context(|| format!("--what convs: {} {}", s.name(), pass.name()))?;
            report(&Timing { shape: s.clone(), pass, batch: n, median_ms });
        }
    }
    Ok(())
}

/// A shape's operands (random) on the backend, and the lengths of its outputs.
struct Buffers<B: Memory> {
    x: B::Buf,
    w: B::Buf,
    bias: B::Buf,
    gout: B::Buf,
    /// Words of y, dx and dW.
    lens: (usize, usize, usize),
}

impl<B: Memory> Buffers<B> {
    fn new(backend: &B, s: &ConvShape, n: usize, seed: u64) -> Result<Self> {
        let (oh, ow) = s.out_hw();
        let (x_len, y_len, w_len) = (n * s.cin * s.h * s.w, n * s.cout * oh * ow, s.cin * s.cout * s.k * s.k);
        // Random values (zeros could take shortcuts nothing else takes), the weight at the usual 1/sqrt(fan-in).
        let random = |stream: u64, len: usize, scale: f32| {
            let mut v = vec![0.0; len];
            rng::fill_normal(seed, stream, &mut v);
            v.iter_mut().for_each(|x| *x *= scale);
            backend.upload(v)
        };
        Ok(Buffers {
            x: random(0, x_len, 1.0)?,
            w: random(1, w_len, 1.0 / ((s.cin * s.k * s.k) as f32).sqrt())?,
            bias: random(2, s.cout, 0.1)?,
            gout: random(3, y_len, 1.0)?,
            lens: (y_len, x_len, w_len),
        })
    }
}

/// The median milliseconds of `iters` runs of `pass` after one warm-up, each ended by a synchronisation.
fn time_pass<B: Backend>(
    backend: &B,
    s: &ConvShape,
    n: usize,
    bufs: &Buffers<B>,
    pass: Pass,
    iters: usize,
) -> Result<f64> {
    let d = s.desc(n)?;
    let (mut out, mut dx, mut dw) =
        (backend.alloc(bufs.lens.0)?, backend.alloc(bufs.lens.1)?, backend.alloc(bufs.lens.2)?);
    let mut once = || -> ddpm::Result<()> {
        match (pass, s.transposed) {
            (Pass::Forward, false) => {
                let epi = Epilogue { bias: Some(&bufs.bias), chan_bias: None, residual: None };
                backend.conv2d_forward(&d, &bufs.x, &bufs.w, epi, &mut out)
            }
            (Pass::Forward, true) => backend.conv_transpose2d_forward(&d, &bufs.x, &bufs.w, Some(&bufs.bias), &mut out),
            (Pass::InputGrad, false) => {
                backend.conv2d_backward(&d, &bufs.x, &bufs.w, &bufs.gout, LayerGrads { dx: Some(&mut dx), dw: None })
            }
            (Pass::InputGrad, true) => backend.conv_transpose2d_backward(
                &d,
                &bufs.x,
                &bufs.w,
                &bufs.gout,
                LayerGrads { dx: Some(&mut dx), dw: None },
            ),
            (Pass::WeightGrad, false) => {
                backend.conv2d_backward(&d, &bufs.x, &bufs.w, &bufs.gout, LayerGrads { dx: None, dw: Some(&mut dw) })
            }
            (Pass::WeightGrad, true) => backend.conv_transpose2d_backward(
                &d,
                &bufs.x,
                &bufs.w,
                &bufs.gout,
                LayerGrads { dx: None, dw: Some(&mut dw) },
            ),
        }?;
        backend.synchronize()
    };
    once()?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        once()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    if times.is_empty() {
        bail!("--iters must be at least 1");
    }
    times.sort_by(f64::total_cmp);
    let mid = times.len() / 2;
    Ok(if times.len() % 2 == 1 { times[mid] } else { (times[mid - 1] + times[mid]) / 2.0 })
}
