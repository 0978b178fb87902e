//! Sets of tensors kept as one contiguous buffer (an arena) on a backend with views (the GPU's), each tensor a view
//! of its part: the parameters, their gradients, the two AdamW moments and the EMA all share one [`Layout`], so the
//! optimiser clips, updates and averages every parameter in three launches instead of several per tensor. On the
//! CPU (no views) the tensors stay separate and the optimiser runs per tensor.
//!
//! The tensors lie in the arena in a placement order ([`Params::placement`](crate::params::Params::placement)):
//! registration order, except that the members of a span (tensors a model reads as one, such as the ResBlocks'
//! time projections) lie next to each other, so that the span is a view too.

use crate::backend::{Backend, Memory};
use crate::error::Result;
use crate::tensor::Tensor;
use std::fmt;

/// Where each tensor of a set starts in its arena: offsets rounded up to 4 words (16 bytes, so a view is as aligned
/// as an allocation for a kernel's vector loads). The gaps hold zeros, which every flat update leaves at zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    parts: Vec<(usize, usize)>,
    total: usize,
}

impl Layout {
    /// The layout of tensors of lengths `lens`, placed in the arena in `order` (a permutation of their indices);
    /// [`Layout::parts`] stays indexed by tensor.
    pub fn of(lens: &[usize], order: &[usize]) -> Self {
        debug_assert_eq!(order.len(), lens.len(), "placement order of every tensor");
        let mut parts = vec![(0, 0); lens.len()];
        let mut total = 0;
        for &i in order {
            parts[i] = (total, lens[i]);
            total = (total + lens[i]).div_ceil(4) * 4;
        }
        Layout { parts, total }
    }

    /// Words in the arena, gaps included.
    pub fn total(&self) -> usize {
        self.total
    }

    /// `(first word, length)` of each tensor.
    pub fn parts(&self) -> &[(usize, usize)] {
        &self.parts
    }

    /// `(first word, length)` of tensors `members` taken together, when each starts where the one before it ends.
    pub fn span(&self, members: &[usize]) -> Option<(usize, usize)> {
        let (start, mut end) = (self.parts.get(*members.first()?)?.0, None);
        for &m in members {
            let &(at, len) = self.parts.get(m)?;
            if end.is_some_and(|e| e != at) {
                return None;
            }
            end = Some(at + len);
        }
        end.map(|e| (start, e - start))
    }
}

/// The arena behind a set of tensors, when they are its views. A copy of the set (`Clone`) has its tensors in
/// separate buffers, so a cloned `Arena` is empty.
pub struct Arena<B: Memory> {
    /// The buffer and where each tensor lies in it.
    buf: Option<(B::Buf, Layout)>,
}

impl<B: Memory> Arena<B> {
    /// No arena: the set's tensors are separate buffers.
    pub fn none() -> Self {
        Arena { buf: None }
    }

    /// The whole arena, when the set has one.
    pub fn buf(&self) -> Option<&B::Buf> {
        self.buf.as_ref().map(|(b, _)| b)
    }

    /// The whole arena, mutable (writing it writes every tensor of the set).
    pub fn buf_mut(&mut self) -> Option<&mut B::Buf> {
        self.buf.as_mut().map(|(b, _)| b)
    }

    /// Another handle on the same arena (its buffer a view of the whole, `backend`'s), or no arena when there is
    /// none: writing through either writes both.
    pub fn alias(&self, backend: &B) -> Result<Self> {
        let buf = match &self.buf {
            Some((b, layout)) => Some((backend.view(b, 0, B::buf_len(b))?, layout.clone())),
            None => None,
        };
        Ok(Arena { buf })
    }

    /// Where each tensor of the set lies in the arena, when the set has one.
    pub fn layout(&self) -> Option<&Layout> {
        self.buf.as_ref().map(|(_, l)| l)
    }
}

impl<B: Memory> Default for Arena<B> {
    fn default() -> Self {
        Self::none()
    }
}

impl<B: Memory> Clone for Arena<B> {
    fn clone(&self) -> Self {
        Self::none()
    }
}

impl<B: Memory> fmt::Debug for Arena<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.buf {
            Some((b, _)) => write!(f, "Arena[{} words]", B::buf_len(b)),
            None => write!(f, "Arena[none]"),
        }
    }
}

/// The host tensors `tensors` on `backend`: views of one arena uploaded in a single copy where the backend has
/// views (placed in `order`), else one buffer each.
pub fn place<B: Backend>(backend: &B, tensors: &[Tensor], order: &[usize]) -> Result<(Arena<B>, Vec<Tensor<B>>)> {
    if !backend.has_views() {
        let placed = tensors.iter().map(|t| t.to_backend(backend)).collect::<Result<_>>()?;
        return Ok((Arena::none(), placed));
    }
    let lens: Vec<usize> = tensors.iter().map(Tensor::numel).collect();
    let layout = Layout::of(&lens, order);
    let mut data = vec![0.0; layout.total()];
    for (t, &(start, len)) in tensors.iter().zip(layout.parts()) {
        data[start..start + len].copy_from_slice(t.data());
    }
    let arena = backend.upload(data)?;
    let shapes: Vec<&[usize]> = tensors.iter().map(|t| t.shape()).collect();
    views(backend, arena, &layout, &shapes)
}

/// Zeros shaped like `shapes`, laid out as [`place`] lays them out in `order`; filled on the backend, not copied
/// there.
pub fn zeros<B: Backend>(backend: &B, shapes: &[&[usize]], order: &[usize]) -> Result<(Arena<B>, Vec<Tensor<B>>)> {
    if !backend.has_views() {
        let zeros = shapes.iter().map(|s| Tensor::full_on(backend, s, 0.0)).collect::<Result<_>>()?;
        return Ok((Arena::none(), zeros));
    }
    let lens: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
    let layout = Layout::of(&lens, order);
    views(backend, backend.full(layout.total(), 0.0)?, &layout, shapes)
}

/// The tensors of `shapes` as views of `arena`, laid out by `layout`.
fn views<B: Backend>(
    backend: &B,
    arena: B::Buf,
    layout: &Layout,
    shapes: &[&[usize]],
) -> Result<(Arena<B>, Vec<Tensor<B>>)> {
    let tensors = layout
        .parts()
        .iter()
        .zip(shapes)
        .map(|(&(start, len), shape)| Tensor::from_buf(backend.clone(), shape, backend.view(&arena, start, len)?))
        .collect::<Result<_>>()?;
    Ok((Arena { buf: Some((arena, layout.clone())) }, tensors))
}
