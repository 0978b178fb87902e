//! Named parameters (PyTorch `state_dict` names) and their gradients, on any [`Backend`].

use crate::arena::{self, Arena};
use crate::backend::{Backend, Cpu};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

/// Index of a parameter in a [`Params`] store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub usize);

/// Index of a span in a [`Params`] store: parameters a model reads as one tensor ([`Params::add_span`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub usize);

/// An ordered set of named tensors on backend `B` (which the tape runs its ops on). The order is the registration
/// order, which is PyTorch's `model.parameters()` order, so reductions over all parameters visit them as PyTorch
/// does.
#[derive(Clone, Debug, Default)]
pub struct Params<B: Backend = Cpu> {
    backend: B,
    names: Vec<String>,
    tensors: Vec<Tensor<B>>,
    index: HashMap<String, usize>,
    /// The spans' members, in order ([`Params::add_span`]).
    spans: Vec<Vec<ParamId>>,
    /// The tensors' arena, when they are views of one (on a GPU).
    arena: Arena<B>,
    /// The conv and linear weights packed for the GEMMs ([`Params::packed`]).
    packs: Packs<B>,
}

/// A parameter set's packed conv weights ([`ConvOps::pack_weights`]): the plan, made once (it depends on the
/// shapes only), and the packing of the current values, made on first use and dropped by every `&mut` access to
/// the parameters, so no conv ever reads a packing of older values. A clone starts without either.
struct Packs<B: Backend> {
    plan: OnceLock<Option<B::PackPlan>>,
    packed: OnceLock<Vec<Option<B::PackedWeight>>>,
}

impl<B: Backend> Default for Packs<B> {
    fn default() -> Self {
        Packs { plan: OnceLock::new(), packed: OnceLock::new() }
    }
}

impl<B: Backend> Clone for Packs<B> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<B: Backend> fmt::Debug for Packs<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Packs {{ packed: {} }}", self.packed.get().is_some())
    }
}

impl Params {
    /// An empty store on the CPU.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<B: Backend> Params<B> {
    /// The backend the tensors live on and a tape over them runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// A copy of every tensor on `backend` (the host is `&Cpu`), same names and order; on a GPU the views of one
    /// arena ([`crate::arena`]).
    pub fn to_backend<C: Backend>(&self, backend: &C) -> Result<Params<C>> {
        let host = self.tensors.iter().map(|t| t.to_backend(&crate::backend::Cpu)).collect::<Result<Vec<_>>>()?;
        let (arena, tensors) = arena::place(backend, &host, &self.placement())?;
        let (names, index, spans) = (self.names.clone(), self.index.clone(), self.spans.clone());
        Ok(Params { backend: backend.clone(), names, tensors, index, spans, arena, packs: Packs::default() })
    }

    /// Declares that the model reads parameters `members` (of equal shapes past the first dimension) as one tensor,
    /// stacked along the first dimension: in an arena they are placed next to each other, so that the span is a
    /// view ([`Params::span_view`]) whose gradient is a view of the gradient arena. Each parameter belongs to one
    /// span at most.
    ///
    /// # Panics
    /// If `members` is empty, repeats a parameter, holds one of another span, or mixes shapes (a model bug).
    pub fn add_span(&mut self, members: &[ParamId]) -> SpanId {
        self.packs = Packs::default();
        let first = members.first().expect("a span has members");
        let rest = &self.tensors[first.0].shape()[1..];
        for (k, m) in members.iter().enumerate() {
            assert_eq!(&self.tensors[m.0].shape()[1..], rest, "span member {} has another shape", self.names[m.0]);
            let taken = members[..k].contains(m) || self.spans.iter().flatten().any(|s| s == m);
            assert!(!taken, "parameter {} in two spans", self.names[m.0]);
        }
        self.spans.push(members.to_vec());
        SpanId(self.spans.len() - 1)
    }

    /// The members of span `s`.
    pub fn span_members(&self, s: SpanId) -> &[ParamId] {
        &self.spans[s.0]
    }

    /// The shape of span `s`: its members stacked along the first dimension.
    pub fn span_shape(&self, s: SpanId) -> Vec<usize> {
        let members = &self.spans[s.0];
        let mut shape = self.tensors[members[0].0].shape().to_vec();
        shape[0] = members.iter().map(|m| self.tensors[m.0].shape()[0]).sum();
        shape
    }

    /// The order of the tensors in an arena: registration order, with each span's members placed together where
    /// its first member is registered.
    pub fn placement(&self) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.tensors.len());
        let mut placed = vec![false; self.tensors.len()];
        for i in 0..self.tensors.len() {
            let span = self.spans.iter().find(|s| s.contains(&ParamId(i)));
            for m in span.map_or(vec![i], |s| s.iter().map(|m| m.0).collect()) {
                if !std::mem::replace(&mut placed[m], true) {
                    order.push(m);
                }
            }
        }
        order
    }

    /// `(first word, length)` of span `s` in an arena laid out as this set's, when its members lie end to end
    /// there (a member whose length is not a multiple of 4 leaves a gap after it).
    pub(crate) fn span_words(&self, layout: &arena::Layout, s: SpanId) -> Option<(usize, usize)> {
        layout.span(&self.spans[s.0].iter().map(|m| m.0).collect::<Vec<_>>())
    }

    /// Span `s` as one tensor, a view of the arena, when the parameters have one and its members lie end to end in
    /// it; `None` otherwise (then a tape stacks them: [`Tape::param_span`](crate::autograd::Tape::param_span)).
    pub fn span_view(&self, s: SpanId) -> Result<Option<Tensor<B>>> {
        let (Some(buf), Some(layout)) = (self.arena.buf(), self.arena.layout()) else { return Ok(None) };
        let Some((start, len)) = self.span_words(layout, s) else { return Ok(None) };
        let view = self.backend.view(buf, start, len)?;
        Tensor::from_buf(self.backend.clone(), &self.span_shape(s), view).map(Some)
    }

    /// A set with these names and spans holding `tensors` (shaped as these), the views of `arena` when it is one
    /// (laid out as this set's arena), e.g. the EMA's weights.
    pub(crate) fn with_tensors(&self, tensors: Vec<Tensor<B>>, arena: Arena<B>) -> Params<B> {
        let (names, index, spans) = (self.names.clone(), self.index.clone(), self.spans.clone());
        Params { backend: self.backend.clone(), names, tensors, index, spans, arena, packs: Packs::default() }
    }

    /// The tensors' arena, when they are views of one.
    pub fn arena(&self) -> &Arena<B> {
        &self.arena
    }

    /// The tensors' arena, mutable, when they are views of one.
    pub fn arena_mut(&mut self) -> &mut Arena<B> {
        self.packs.packed = OnceLock::new();
        &mut self.arena
    }

    /// Parameter `id` packed for the convs, when it is a 4-D or 2-D weight of an arena and the backend packs (bf16 on a
    /// GPU): on the first call after the parameters last changed, every such weight is packed, in one launch.
    pub fn packed(&self, id: ParamId) -> Result<Option<&B::PackedWeight>> {
        self.packed_at(id.0)
    }

    /// Entry `index` of the packing: the tensors' then the spans' ([`Params::pack_plan`]).
    fn packed_at(&self, index: usize) -> Result<Option<&B::PackedWeight>> {
        let plan = match self.packs.plan.get() {
            Some(plan) => plan,
            None => {
                let plan = self.pack_plan()?;
                self.packs.plan.get_or_init(|| plan)
            }
        };
        let (Some(plan), Some(arena)) = (plan, self.arena.buf()) else { return Ok(None) };
        let packed = match self.packs.packed.get() {
            Some(p) => p,
            None => {
                let p = self.backend.pack_weights(plan, arena)?;
                self.packs.packed.get_or_init(|| p)
            }
        };
        Ok(packed.get(index).and_then(Option::as_ref))
    }

    /// Span `s` packed for the convs, as [`Params::packed`] packs a weight, when it is a view of the arena
    /// ([`Params::span_view`]) and the backend packs.
    pub fn packed_span(&self, s: SpanId) -> Result<Option<&B::PackedWeight>> {
        self.packed_at(self.tensors.len() + s.0)
    }

    /// The backend's plan for packing this set's weights from its arena (`None` without an arena): each tensor,
    /// then each span that is a view of the arena (an empty shape, which packs nothing, for one that is not).
    fn pack_plan(&self) -> Result<Option<B::PackPlan>> {
        let Some(layout) = self.arena.layout() else { return Ok(None) };
        let mut tensors: Vec<(usize, Vec<usize>)> =
            layout.parts().iter().zip(&self.tensors).map(|(&(at, _), t)| (at, t.shape().to_vec())).collect();
        for s in 0..self.spans.len() {
            let words = self.span_words(layout, SpanId(s));
            tensors.push(words.map_or((0, Vec::new()), |(at, _)| (at, self.span_shape(SpanId(s)))));
        }
        let tensors: Vec<(usize, &[usize])> = tensors.iter().map(|(at, s)| (*at, &s[..])).collect();
        self.backend.pack_plan(&tensors)
    }

    /// Registers `tensor` under `name` (which must be new).
    pub fn add(&mut self, name: &str, tensor: Tensor<B>) -> ParamId {
        self.packs = Packs::default();
        assert!(!self.index.contains_key(name), "parameter {name} registered twice");
        self.index.insert(name.to_string(), self.tensors.len());
        self.names.push(name.to_string());
        self.tensors.push(tensor);
        ParamId(self.tensors.len() - 1)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(Tensor::numel).sum()
    }

    /// The tensor of `id`.
    pub fn get(&self, id: ParamId) -> &Tensor<B> {
        &self.tensors[id.0]
    }

    /// The name of `id`.
    pub fn name(&self, id: ParamId) -> &str {
        &self.names[id.0]
    }

    /// The tensor called `name`, if any.
    pub fn by_name(&self, name: &str) -> Option<&Tensor<B>> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// `(name, tensor)` pairs in registration order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor<B>)> {
        self.names.iter().map(String::as_str).zip(&self.tensors)
    }

    /// The tensors, mutable, in registration order.
    ///
    /// Writing through a tensor that is a view writes the arena too; replacing a tensor would detach it from the
    /// arena, which the flat optimiser updates, so only copies (which have no arena) may have tensors replaced.
    pub fn tensors_mut(&mut self) -> &mut [Tensor<B>] {
        self.packs.packed = OnceLock::new();
        &mut self.tensors
    }

    /// The tensors in registration order.
    pub fn tensors(&self) -> &[Tensor<B>] {
        &self.tensors
    }
}

impl Params {
    /// Replaces every tensor by the one of the same name in `source`, which must hold exactly these names with
    /// these shapes. `what` names the source in errors (a file name, say).
    pub fn load_from(&mut self, source: &HashMap<String, Tensor>, what: &str) -> Result<()> {
        self.packs = Packs::default();
        for (name, t) in self.names.iter().zip(self.tensors.iter_mut()) {
            let src = source.get(name).ok_or_else(|| Error::file(what, format!("missing tensor `{name}`")))?;
            if src.shape() != t.shape() {
                return Err(Error::file(
                    what,
                    format!("tensor `{name}` has shape {:?}, expected {:?}", src.shape(), t.shape()),
                ));
            }
            *t = src.clone();
        }
        if let Some(extra) = source.keys().find(|k| !self.index.contains_key(*k)) {
            return Err(Error::file(what, format!("unexpected tensor `{extra}`")));
        }
        Ok(())
    }
}

/// A training run's gradients, kept from step to step: on a GPU the views of one arena laid out as the parameters'
/// ([`crate::arena`]), which the backward pass writes in place ([`Tape::with_grad_store`]) and the flat optimiser
/// reads in one launch; on the CPU separate tensors.
///
/// [`Tape::with_grad_store`]: crate::autograd::Tape::with_grad_store
#[derive(Debug)]
pub struct GradStore<B: Backend = Cpu> {
    pub grads: Grads<B>,
    pub(crate) arena: Arena<B>,
    /// With an arena: the gradient norm's first pass over it, one row `(first word, length, block, blocks)` per
    /// block, each block doing what block `block` of a per-tensor `sumsq_partials` launch of `blocks` blocks over
    /// that tensor does, so the flat norm adds the same partials in the same order as the per-tensor one.
    pub(crate) norm_table: Option<B::Idx>,
}

impl<B: Backend> GradStore<B> {
    /// Zero gradients shaped like `params`, on their backend.
    pub fn zeros_like(params: &Params<B>) -> Result<Self> {
        let shapes: Vec<&[usize]> = params.tensors.iter().map(|t| t.shape()).collect();
        let (arena, tensors) = arena::zeros(&params.backend, &shapes, &params.placement())?;
        let norm_table = match arena.layout() {
            Some(layout) => {
                if layout.total() > i32::MAX as usize {
                    return Err(Error::Shape(format!("a gradient arena of {} words", layout.total())));
                }
                let mut rows = Vec::new();
                for &(start, len) in layout.parts() {
                    let blocks = crate::gpu::launch::partials(len);
                    for b in 0..blocks {
                        rows.extend([start, len, b, blocks].map(|v| v as u32));
                    }
                }
                Some(params.backend.upload_indices(&rows)?)
            }
            None => None,
        };
        Ok(GradStore { grads: Grads(tensors), arena, norm_table })
    }
}

impl<B: Backend> Clone for GradStore<B> {
    /// A copy of the gradients, each in its own buffer (no arena).
    fn clone(&self) -> Self {
        GradStore { grads: self.grads.clone(), arena: Arena::none(), norm_table: None }
    }
}

/// Gradients, one tensor per parameter of a [`Params`], in the same order.
#[derive(Clone, Debug)]
pub struct Grads<B: Backend = Cpu>(pub Vec<Tensor<B>>);

impl<B: Backend> Grads<B> {
    /// Zero gradients shaped like `params`.
    pub fn zeros_like(params: &Params<B>) -> Result<Self> {
        params
            .tensors
            .iter()
            .map(|t| Tensor::full_on(&params.backend, t.shape(), 0.0))
            .collect::<Result<_>>()
            .map(Grads)
    }

    /// The gradient of `id`.
    pub fn get(&self, id: ParamId) -> &Tensor<B> {
        &self.0[id.0]
    }
}
