//! A dense, contiguous, row-major f32 tensor (NCHW for images), on a [`Backend`].
//!
//! `Tensor` is `Tensor<Cpu>`: host memory with direct access ([`Tensor::data`]). A tensor on another backend
//! holds that backend's buffer and a handle to it; [`Tensor::to_host`] and [`Tensor::to_backend`] move data
//! across. Shapes and the shape checks are the same everywhere, so model code does not change per device.

use crate::backend::{Backend, Cpu};
use crate::error::Result;
use crate::shape_err;
use std::fmt;

/// A contiguous row-major f32 tensor on backend `B`.
pub struct Tensor<B: Backend = Cpu> {
    shape: Vec<usize>,
    buf: B::Buf,
    backend: B,
}

impl Tensor<Cpu> {
    /// A tensor of `shape` holding `data` (row-major); `Err` if the lengths disagree.
    pub fn new(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        Tensor::from_buf(Cpu, shape, data)
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor::full(shape, 0.0)
    }

    /// A tensor with every element equal to `v`.
    pub fn full(shape: &[usize], v: f32) -> Self {
        Tensor { shape: shape.to_vec(), buf: vec![v; shape.iter().product()], backend: Cpu }
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[f32] {
        &self.buf
    }

    /// The elements, row-major, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.buf
    }

    /// Takes the elements out.
    pub fn into_data(self) -> Vec<f32> {
        self.buf
    }

    /// A copy of the first `k` items along the first axis (all of them when there are fewer), e.g. the first `k`
    /// images of a batch.
    pub fn head(&self, k: usize) -> Result<Self> {
        let Some((&n, rest)) = self.shape.split_first() else {
            return crate::shape_err!("head: a tensor without axes has no items");
        };
        let k = k.min(n);
        let per_item = rest.iter().product::<usize>();
        let mut shape = self.shape.clone();
        shape[0] = k;
        Tensor::new(&shape, self.buf[..k * per_item].to_vec())
    }

    /// Elementwise `self += other` (same shape).
    pub fn add_assign(&mut self, other: &Tensor) {
        debug_assert_eq!(self.shape, other.shape);
        for (a, b) in self.buf.iter_mut().zip(&other.buf) {
            *a += b;
        }
    }

    /// Largest absolute value (0 for an empty tensor).
    pub fn max_abs(&self) -> f32 {
        self.buf.iter().fold(0.0f32, |m, v| m.max(v.abs()))
    }

    /// This host tensor moved to `backend` (no copy when that is the CPU).
    pub fn into_backend<B: Backend>(self, backend: &B) -> Result<Tensor<B>> {
        let buf = backend.upload(self.buf)?;
        Ok(Tensor { shape: self.shape, buf, backend: backend.clone() })
    }
}

impl<B: Backend> Tensor<B> {
    /// A tensor of `shape` over `buf` on `backend`; `Err` if the lengths disagree.
    pub fn from_buf(backend: B, shape: &[usize], buf: B::Buf) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != B::buf_len(&buf) {
            return shape_err!("shape {:?} needs {} values, got {}", shape, n, B::buf_len(&buf));
        }
        Ok(Tensor { shape: shape.to_vec(), buf, backend })
    }

    /// A tensor of `shape` for a kernel to overwrite (zeros on the CPU, unspecified on a device).
    pub fn alloc(backend: &B, shape: &[usize]) -> Result<Self> {
        Ok(Tensor { shape: shape.to_vec(), buf: backend.alloc(shape.iter().product())?, backend: backend.clone() })
    }

    /// A tensor of `shape` on `backend` with every element equal to `v`.
    pub fn full_on(backend: &B, shape: &[usize], v: f32) -> Result<Self> {
        Ok(Tensor { shape: shape.to_vec(), buf: backend.full(shape.iter().product(), v)?, backend: backend.clone() })
    }

    /// The same elements under another shape with the same number of elements (no copy).
    pub fn reshape(self, shape: &[usize]) -> Result<Self> {
        Tensor::from_buf(self.backend, shape, self.buf)
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The backend the tensor lives on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend buffer.
    pub fn buf(&self) -> &B::Buf {
        &self.buf
    }

    /// The backend buffer, for a kernel to write.
    pub fn buf_mut(&mut self) -> &mut B::Buf {
        &mut self.buf
    }

    /// A host copy of the elements (waits for the work queued before).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.backend.download(&self.buf)
    }

    /// A copy of this tensor on `backend`, through the host.
    pub fn to_backend<C: Backend>(&self, backend: &C) -> Result<Tensor<C>> {
        Tensor::new(&self.shape, self.to_vec()?)?.into_backend(backend)
    }

    /// This tensor on the host (a move when it is there already).
    pub fn to_host(self) -> Result<Tensor> {
        let data = self.backend.download_owned(self.buf)?;
        Tensor::new(&self.shape, data)
    }

    /// A copy on the same backend; `Err` when the device has no memory for it.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Tensor { shape: self.shape.clone(), buf: self.backend.copy(&self.buf)?, backend: self.backend.clone() })
    }

    /// `(n, c, h, w)` of a 4-d tensor; `Err` naming `what` otherwise.
    pub fn dims4(&self, what: &str) -> Result<(usize, usize, usize, usize)> {
        match self.shape[..] {
            [n, c, h, w] => Ok((n, c, h, w)),
            _ => shape_err!("{what}: expected a 4-d NCHW tensor, got shape {:?}", self.shape),
        }
    }

    /// `(rows, cols)` of a 2-d tensor; `Err` naming `what` otherwise.
    pub fn dims2(&self, what: &str) -> Result<(usize, usize)> {
        match self.shape[..] {
            [r, c] => Ok((r, c)),
            _ => shape_err!("{what}: expected a 2-d tensor, got shape {:?}", self.shape),
        }
    }
}

impl<B: Backend> Clone for Tensor<B> {
    /// A copy on the same backend.
    ///
    /// # Panics
    /// When a device cannot allocate the copy (never on the CPU); [`Tensor::try_clone`] returns that as an error.
    fn clone(&self) -> Self {
        self.try_clone().unwrap_or_else(|e| panic!("cloning a tensor: {e}"))
    }
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.buf == other.buf
    }
}

impl<B: Backend> fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor").field("shape", &self.shape).field("data", &self.buf).finish()
    }
}
