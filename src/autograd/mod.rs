//! A tape-based reverse-mode autograd.
//!
//! Every op appends a node holding an explicit, printable [`Op`] (its inputs and attributes, as a [`Rule`])
//! and its output value. [`Tape::backward`] walks the tape from the end, asks each op's rule for the gradients of
//! its inputs and frees the node's value and saved statistics as soon as it has been processed, so memory falls as
//! the tape unwinds. Gradients are only computed for inputs that lead back to a parameter.
//!
//! The ops themselves live with their kernels, one folder per family under `src/ops/`: each family's `mod.rs`
//! holds its `Tape` methods (shape checks, the forward launch) and, right below each, the rule whose `backward`
//! turns `dL/d(output)` into the inputs' gradients.
//!
//! The tape runs on the backend of its [`Params`]: `Tape<Cpu>` (the default) on the CPU kernels, `Tape<Gpu<E>>`
//! on the emulator or a CUDA device. The ops dispatch to that [`Backend`] below the op, so a model written
//! against `Tape<B>` runs unchanged on every backend.

mod columns;
pub mod profile;

use crate::backend::{Backend, Cpu};
use crate::desc::Planes;
use crate::error::Result;
use crate::ops::conv::{ChanBias, GradOperand};
use crate::params::{GradStore, Grads, ParamId, Params, SpanId};
use crate::shape_err;
use crate::tensor::Tensor;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A handle to a value on a [`Tape`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(pub(crate) usize);

/// An op as the tape records it: what it read, and how to send a gradient back through it.
pub trait Rule<B: Backend>: fmt::Display {
    /// The op's kind, as printed and profiled.
    fn name(&self) -> &'static str;
    /// The values this op reads.
    fn inputs(&self) -> Vec<Var>;
    /// Gradients of this op's inputs, given `gout = dL/d(output)`. Inputs that need no gradient may be left out
    /// (and are dropped if returned).
    fn backward(&self, tape: &Tape<B>, gout: Tensor<B>) -> Result<Vec<(Var, Tensor<B>)>>;
    /// Whether `backward` reads `gout` as a conv operand ([`Tape::gout_operand`]): the ops that make this op's
    /// output gradient then write that operand with it where they can.
    fn reads_grad_operand(&self) -> bool {
        false
    }
    /// The per-image channel bias this op adds to its output, if any (its gradient is the per-image channel sums
    /// of the output's).
    fn chan_bias(&self) -> Option<ChanBias> {
        None
    }
}

/// One recorded operation.
pub enum Op<B: Backend> {
    /// A constant fed into the graph.
    Input,
    /// A trainable parameter.
    Param(ParamId),
    /// Trainable parameters read as one tensor ([`Params::add_span`]).
    ParamSpan(SpanId),
    /// A computed value: the rule of the op that made it.
    Computed(Box<dyn Rule<B>>),
}

impl<B: Backend> Op<B> {
    fn name(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Param(_) => "param",
            Op::ParamSpan(_) => "param_span",
            Op::Computed(rule) => rule.name(),
        }
    }
}

impl<B: Backend> fmt::Display for Op<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Computed(rule) => rule.fmt(f),
            op => f.write_str(op.name()),
        }
    }
}

/// `%i, %j, ...`: how a rule prints its inputs.
pub fn list_vars(vars: &[Var]) -> String {
    vars.iter().map(|v| format!("%{}", v.0)).collect::<Vec<_>>().join(", ")
}

/// One recorded operation and its output.
struct Node<B: Backend> {
    op: Op<B>,
    /// The output; `None` for parameters (read from the store) and after the backward pass has freed it (a span of
    /// parameters holds its view of the store, or its stacked copy).
    value: Option<Tensor<B>>,
    /// Whether a parameter's gradient depends on this node.
    needs_grad: bool,
}

/// The record of one forward pass over a set of parameters.
pub struct Tape<'p, B: Backend = Cpu> {
    params: &'p Params<B>,
    nodes: Vec<Node<B>>,
    grad_enabled: bool,
    /// Where the parameters' gradients go, when the backward pass writes them in place.
    store: Option<&'p GradStore<B>>,
    /// Per parameter: whether a backward kernel has been handed its gradient's place in `store` (once only, so that
    /// a second use of the parameter accumulates instead of overwriting).
    handed: RefCell<Vec<bool>>,
    /// During [`Tape::backward`]: each node's gradient so far, by node.
    pending: RefCell<Vec<Option<Tensor<B>>>>,
    /// Values already in the layout the backend's convs read, by node ([`Tape::operand`]).
    operands: RefCell<HashMap<usize, Arc<B::Operand>>>,
    /// During [`Tape::backward`]: gradients' operands, by node, each valid for the node's gradient as it is when
    /// set (anything added to that gradient afterwards drops it).
    grad_operands: RefCell<HashMap<usize, Arc<GradOperand<B>>>>,
    /// During [`Tape::backward`]: gradients assembled from column blocks, by node ([`columns`]).
    columns: RefCell<HashMap<usize, columns::Assembled<B>>>,
    /// During [`Tape::backward`]: the node whose rule is running.
    current: Cell<usize>,
    /// During [`Tape::backward`]: each node's first reader in the forward order (the last to run backward), by
    /// node; `usize::MAX` for none.
    first_reader: Vec<usize>,
}

impl<'p, B: Backend> Tape<'p, B> {
    /// A tape that records for a backward pass.
    pub fn new(params: &'p Params<B>) -> Self {
        Tape {
            params,
            nodes: Vec::new(),
            grad_enabled: true,
            store: None,
            handed: RefCell::default(),
            pending: RefCell::default(),
            operands: RefCell::default(),
            grad_operands: RefCell::default(),
            columns: RefCell::default(),
            current: Cell::new(0),
            first_reader: Vec::new(),
        }
    }

    /// This tape with the parameters' gradients written into `store` (shaped like the parameters): backward
    /// kernels write each parameter's gradient straight into its place there, so that on a GPU they land in the
    /// arena the flat optimiser reads, without copies; [`Tape::backward`] then returns views of `store`.
    pub fn with_grad_store(self, store: &'p GradStore<B>) -> Self {
        Tape { store: Some(store), handed: RefCell::new(vec![false; self.params.len()]), ..self }
    }

    /// A tape for inference only: nothing needs a gradient, so ops save nothing for a backward pass.
    pub fn inference(params: &'p Params<B>) -> Self {
        Tape {
            params,
            nodes: Vec::new(),
            grad_enabled: false,
            store: None,
            handed: RefCell::default(),
            pending: RefCell::default(),
            operands: RefCell::default(),
            grad_operands: RefCell::default(),
            columns: RefCell::default(),
            current: Cell::new(0),
            first_reader: Vec::new(),
        }
    }

    /// The backend the ops run on (the parameters').
    pub fn backend(&self) -> &B {
        self.params.backend()
    }

    /// The parameters this tape reads.
    pub fn params(&self) -> &'p Params<B> {
        self.params
    }

    /// Records a constant input (no gradient), already on the tape's backend.
    pub fn input(&mut self, t: Tensor<B>) -> Var {
        self.nodes.push(Node { op: Op::Input, value: Some(t), needs_grad: false });
        Var(self.nodes.len() - 1)
    }

    /// Records a constant input from the host, copied to the tape's backend (moved, on the CPU).
    pub fn input_host(&mut self, t: Tensor) -> Result<Var> {
        let t = t.to_backend(self.backend())?;
        Ok(self.input(t))
    }

    /// Records a use of parameter `id`.
    pub fn param(&mut self, id: ParamId) -> Var {
        let needs_grad = self.grad_enabled;
        self.nodes.push(Node { op: Op::Param(id), value: None, needs_grad });
        Var(self.nodes.len() - 1)
    }

    /// Records a use of the parameters of span `s` as one tensor, their values stacked along the first dimension:
    /// a view of the parameters' arena where they have one (nothing is copied, and the gradient is written into
    /// the gradient arena in place), else a stacked copy. The backward pass hands each member its rows of the
    /// gradient.
    pub fn param_span(&mut self, s: SpanId) -> Result<Var> {
        let value = match self.params.span_view(s)? {
            Some(view) => view,
            None => {
                let be = self.backend();
                let mut stacked = Tensor::alloc(be, &self.params.span_shape(s))?;
                let mut at = 0;
                for &m in self.params.span_members(s) {
                    let member = self.params.get(m);
                    be.copy_into(member.buf(), stacked.buf_mut(), at)?;
                    at += member.numel();
                }
                stacked
            }
        };
        self.nodes.push(Node { op: Op::ParamSpan(s), value: Some(value), needs_grad: self.grad_enabled });
        Ok(Var(self.nodes.len() - 1))
    }

    /// The value of `v`.
    ///
    /// # Panics
    /// If `v` was freed by [`Tape::backward`] (which consumes the tape, so this cannot happen from outside).
    pub fn value(&self, v: Var) -> &Tensor<B> {
        let node = &self.nodes[v.0];
        match node.op {
            Op::Param(id) => self.params.get(id),
            _ => node.value.as_ref().expect("value already freed by the backward pass"),
        }
    }

    /// The value of the computed or input `v`, moved out of the tape (which it ends).
    pub fn into_value(mut self, v: Var) -> Result<Tensor<B>> {
        match self.nodes.get_mut(v.0).map(|n| (&n.op, n.value.take())) {
            Some((Op::Param(id), _)) => self.params.get(*id).try_clone(),
            Some((_, Some(t))) => Ok(t),
            _ => shape_err!("into_value: {v:?} has no value on this tape"),
        }
    }

    /// `v` packed for the convs when it is a parameter the backend packs ([`Params::packed`]).
    pub fn packed(&self, v: Var) -> Result<Option<&B::PackedWeight>> {
        match self.nodes[v.0].op {
            Op::Param(id) => self.params.packed(id),
            Op::ParamSpan(s) => self.params.packed_span(s),
            _ => Ok(None),
        }
    }

    /// `v` (`[n, c, h, w]` or `[n, c]`) in the layout the backend's convs and linear layers read
    /// ([`ConvOps::Operand`](crate::backend::ConvOps::Operand)): the one its producer wrote or an earlier reader
    /// made, else converted now and kept for `v`'s later readers; `None` where the convs read f32 as it is.
    pub fn operand(&self, v: Var) -> Result<Option<Arc<B::Operand>>> {
        if let Some(op) = self.operands.borrow().get(&v.0) {
            return Ok(Some(op.clone()));
        }
        let planes = match *self.value(v).shape() {
            [n, c, h, w] => Planes { n, c, plane: h * w },
            [n, c] => Planes { n, c, plane: 1 },
            ref s => return shape_err!("operand: expected a 4-D or 2-D tensor, got shape {s:?}"),
        };
        let Some(op) = self.backend().operand(self.value(v).buf(), planes)? else { return Ok(None) };
        let op = Arc::new(op);
        self.operands.borrow_mut().insert(v.0, op.clone());
        Ok(Some(op))
    }

    /// Records `op` as `v`'s operand, written by the op that made `v`.
    pub(crate) fn set_operand(&self, v: Var, op: B::Operand) {
        self.operands.borrow_mut().insert(v.0, Arc::new(op));
    }

    /// The operand of the gradient of the node whose rule is running (its `gout`), when the op that made that
    /// gradient wrote it, or an earlier reader of the same gradient made it.
    pub fn gout_operand(&self) -> Option<Arc<GradOperand<B>>> {
        self.grad_operands.borrow().get(&self.current.get()).cloned()
    }

    /// During [`Tape::backward`]: whether the running rule should write the operand of `v`'s gradient with it
    /// (and record it with `Tape::set_grad_operand`): when a conv's backward reads that gradient ([`Rule::reads_grad_operand`]) and
    /// the running rule is the last of `v`'s readers to add to it (no reader of `v` is left to run).
    pub fn wants_grad_operand(&self, v: Var) -> bool {
        matches!(&self.nodes[v.0].op, Op::Computed(rule) if rule.reads_grad_operand())
            && self.first_reader.get(v.0) == Some(&self.current.get())
    }

    /// Records `op` as the operand of `v`'s gradient as it will be once the running rule returns it: the whole
    /// gradient (the running rule adds last, or is `v`'s only reader); a later addition to it drops `op`.
    pub(crate) fn set_grad_operand(&self, v: Var, op: Arc<GradOperand<B>>) {
        self.grad_operands.borrow_mut().insert(v.0, op);
    }

    /// Whether a gradient must flow into `v`.
    pub fn needs_grad(&self, v: Var) -> bool {
        self.nodes[v.0].needs_grad
    }

    /// Appends the op `rule` with its computed `value`; `started` is when the op began (for the profile).
    pub fn push(&mut self, rule: impl Rule<B> + 'static, value: Tensor<B>, started: Option<std::time::Instant>) -> Var {
        profile::record(rule.name(), false, started);
        let needs_grad = rule.inputs().iter().any(|&v| self.needs_grad(v));
        self.nodes.push(Node { op: Op::Computed(Box::new(rule)), value: Some(value), needs_grad });
        Var(self.nodes.len() - 1)
    }

    /// `Some(tensor shaped like v)` for a backward kernel to overwrite when `v` needs a gradient: for a parameter
    /// with a gradient store, the first time, its place in the store.
    pub fn grad_for(&self, v: Var) -> Result<Option<Tensor<B>>> {
        if !self.needs_grad(v) {
            return Ok(None);
        }
        let (members, place): (&[ParamId], _) = match &self.nodes[v.0].op {
            Op::Param(id) => (std::slice::from_ref(id), self.store_place(*id)?),
            Op::ParamSpan(s) => (self.params.span_members(*s), self.store_span_place(*s)?),
            _ => (&[], None),
        };
        let first = !members.is_empty() && members.iter().all(|m| self.handed.borrow().get(m.0).is_some_and(|h| !h));
        if let (true, Some(place)) = (first, place) {
            members.iter().for_each(|m| self.handed.borrow_mut()[m.0] = true);
            return Ok(Some(place));
        }
        Tensor::alloc(self.backend(), self.value(v).shape()).map(Some)
    }

    /// [`Tape::grad_for`], except that when `v`'s other readers have already made its gradient, that gradient is
    /// handed over with `true`: a kernel that adds its part to it, in the pass that computes it, saves the separate
    /// addition [`Tape::backward`] would make. The caller returns it as `v`'s gradient.
    pub fn grad_into(&self, v: Var) -> Result<Option<(Tensor<B>, bool)>> {
        let so_far = match self.nodes[v.0].op {
            // Parameters gather their gradients apart.
            Op::Param(_) | Op::ParamSpan(_) => None,
            _ => self.pending.borrow_mut().get_mut(v.0).and_then(Option::take),
        };
        match so_far {
            Some(g) => {
                // The caller adds to it: its operand, if any, no longer holds.
                self.grad_operands.borrow_mut().remove(&v.0);
                Ok(Some((g, true)))
            }
            None => Ok(self.grad_for(v)?.map(|g| (g, false))),
        }
    }

    /// A view of parameter `id`'s gradient in the store, if there is one and it is an arena (on the CPU the
    /// gradients are separate tensors, which the backward pass replaces).
    fn store_place(&self, id: ParamId) -> Result<Option<Tensor<B>>> {
        let Some(store) = self.store.filter(|s| s.arena.buf().is_some()) else { return Ok(None) };
        let g = &store.grads.0[id.0];
        let be = self.backend();
        Tensor::from_buf(be.clone(), g.shape(), be.view(g.buf(), 0, g.numel())?).map(Some)
    }

    /// A view of span `s`'s gradient in the store, if there is one, it is an arena, and the span's members lie end to
    /// end in it (as they do when the parameters' arena has them so: both are laid out alike).
    fn store_span_place(&self, s: SpanId) -> Result<Option<Tensor<B>>> {
        let Some(store) = self.store else { return Ok(None) };
        let (Some(buf), Some(layout)) = (store.arena.buf(), store.arena.layout()) else { return Ok(None) };
        let Some((start, len)) = self.params.span_words(layout, s) else { return Ok(None) };
        let be = self.backend();
        Tensor::from_buf(be.clone(), &self.params.span_shape(s), be.view(buf, start, len)?).map(Some)
    }

    /// Span `s`'s gradient `g` as its members' gradients, each its rows of `g`: views where the backend has them
    /// (so that a gradient written into the store in place stays there), else copies.
    fn split_span(&self, s: SpanId, g: &Tensor<B>) -> Result<Vec<(ParamId, Tensor<B>)>> {
        let be = self.backend();
        let host = if be.has_views() { None } else { Some(be.download(g.buf())?) };
        let mut at = 0;
        let mut parts = Vec::new();
        for &m in self.params.span_members(s) {
            let shape = self.params.get(m).shape();
            let len = shape.iter().product::<usize>();
            let buf = match &host {
                None => be.view(g.buf(), at, len)?,
                Some(h) => be.upload(h[at..at + len].to_vec())?,
            };
            parts.push((m, Tensor::from_buf(be.clone(), shape, buf)?));
            at += len;
        }
        Ok(parts)
    }

    /// `Err` naming `what` when the optional input `v` is not exactly `shape`.
    pub fn check_shape(&self, v: Option<Var>, shape: &[usize], what: &str) -> Result<()> {
        match v.map(|v| self.value(v).shape()) {
            Some(s) if s != shape => shape_err!("{what}: expected shape {shape:?}, got {s:?}"),
            _ => Ok(()),
        }
    }

    /// Reverse-mode differentiation of the scalar `loss`: the gradient of every parameter (zero for those
    /// `loss` does not depend on). Consumes the tape, freeing each node's memory once it has been used.
    pub fn backward(mut self, loss: Var) -> Result<Grads<B>> {
        if self.value(loss).numel() != 1 {
            return shape_err!("backward: the loss must have one element, got shape {:?}", self.value(loss).shape());
        }
        let mut param_grads: Vec<Option<Tensor<B>>> = (0..self.params.len()).map(|_| None).collect();
        self.nodes.truncate(loss.0 + 1);
        let mut grads: Vec<Option<Tensor<B>>> = (0..self.nodes.len()).map(|_| None).collect();
        grads[loss.0] = Some(Tensor::full_on(self.backend(), self.value(loss).shape(), 1.0)?);
        *self.pending.get_mut() = grads;
        let mut first_reader = vec![usize::MAX; self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate().rev() {
            if let Op::Computed(rule) = &node.op {
                rule.inputs().iter().for_each(|v| first_reader[v.0] = i);
            }
        }
        self.first_reader = first_reader;
        while let Some(node) = self.nodes.pop() {
            let gout = self.pending.get_mut().pop().flatten();
            let gout = self.take_assembled(self.nodes.len(), gout)?;
            let (Some(gout), true) = (gout, node.needs_grad) else { continue };
            if let Op::Param(id) = node.op {
                accumulate(self.backend(), &mut param_grads[id.0], gout)?;
                continue;
            }
            if let Op::ParamSpan(s) = node.op {
                for (id, g) in self.split_span(s, &gout)? {
                    accumulate(self.backend(), &mut param_grads[id.0], g)?;
                }
                continue;
            }
            let Op::Computed(rule) = &node.op else { continue };
            self.current.set(self.nodes.len());
            let timer = profile::start();
            let mut input_grads = rule.backward(&self, gout)?;
            profile::record(rule.name(), true, timer);
            input_grads.retain(|(v, _)| self.needs_grad(*v));
            for (v, g) in input_grads {
                debug_assert_eq!(g.shape(), self.value(v).shape(), "gradient shape of {v:?}");
                if accumulate(self.backend(), &mut self.pending.borrow_mut()[v.0], g)? {
                    self.grad_operands.get_mut().remove(&v.0);
                }
            }
            self.grad_operands.get_mut().remove(&self.nodes.len());
        }
        let grads = param_grads
            .into_iter()
            .enumerate()
            .map(|(id, g)| self.finish_grad(ParamId(id), g))
            .collect::<Result<_>>()?;
        Ok(Grads(grads))
    }

    /// Parameter `id`'s gradient `g` (`None`: zero) where it belongs: in the store when there is one (copied there
    /// when a kernel wrote it elsewhere; nothing to do when it was written in place).
    fn finish_grad(&self, id: ParamId, g: Option<Tensor<B>>) -> Result<Tensor<B>> {
        let be = self.backend();
        let shape = self.params.get(id).shape();
        match (self.store_place(id)?, g) {
            (None, Some(g)) => Ok(g),
            (None, None) => Tensor::full_on(be, shape, 0.0),
            (Some(place), Some(g)) if be.same_words(place.buf(), g.buf()) => Ok(g),
            (Some(mut place), g) => {
                let g = match g {
                    Some(g) => g,
                    None => Tensor::full_on(be, shape, 0.0)?,
                };
                be.copy_into(g.buf(), place.buf_mut(), 0)?;
                Ok(place)
            }
        }
    }
}

/// `slot += g` (returning true), or `slot = g` when empty.
fn accumulate<B: Backend>(backend: &B, slot: &mut Option<Tensor<B>>, g: Tensor<B>) -> Result<bool> {
    match slot {
        Some(acc) => backend.add_assign(acc.buf_mut(), g.buf()).map(|()| true),
        None => {
            *slot = Some(g);
            Ok(false)
        }
    }
}

impl<B: Backend> fmt::Display for Tape<'_, B> {
    /// One line per node: `%i = op(inputs) [shape]`, parameters by name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, node) in self.nodes.iter().enumerate() {
            let shape = match (&node.op, &node.value) {
                (Op::Param(id), _) => format!("{:?} {}", self.params.get(*id).shape(), self.params.name(*id)),
                (Op::ParamSpan(s), _) => {
                    let names: Vec<&str> = self.params.span_members(*s).iter().map(|&m| self.params.name(m)).collect();
                    format!("{:?} {}", self.params.span_shape(*s), names.join(" + "))
                }
                (_, Some(v)) => format!("{:?}", v.shape()),
                (_, None) => "freed".to_string(),
            };
            writeln!(f, "%{i} = {} {shape}", node.op)?;
        }
        Ok(())
    }
}
