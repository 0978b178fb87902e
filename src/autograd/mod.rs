//! A tape-based reverse-mode autograd.
//!
//! Every op appends a [`Node`] holding an explicit, printable [`Op`] (its inputs and attributes) and its output
//! value. [`Tape::backward`] walks the tape from the end, asks each op for the gradients of its inputs
//! (`ops.rs` keeps each op's forward and backward side by side) and frees the node's value and saved statistics
//! as soon as it has been processed, so memory falls as the tape unwinds. Gradients are only computed for inputs
//! that lead back to a parameter.

mod ops;
pub mod profile;

pub use ops::{ConvExtra, Op};

use crate::error::Result;
use crate::params::{Grads, ParamId, Params};
use crate::shape_err;
use crate::tensor::Tensor;
use std::fmt;

/// A handle to a value on a [`Tape`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(pub(crate) usize);

/// One recorded operation and its output.
struct Node {
    op: Op,
    /// The output; `None` for parameters (read from the store) and after the backward pass has freed it.
    value: Option<Tensor>,
    /// Whether a parameter's gradient depends on this node.
    needs_grad: bool,
}

/// The record of one forward pass over a set of parameters.
pub struct Tape<'p> {
    params: &'p Params,
    nodes: Vec<Node>,
    grad_enabled: bool,
}

impl<'p> Tape<'p> {
    /// A tape that records for a backward pass.
    pub fn new(params: &'p Params) -> Self {
        Tape { params, nodes: Vec::new(), grad_enabled: true }
    }

    /// A tape for inference only: nothing needs a gradient, so ops save nothing for a backward pass.
    pub fn inference(params: &'p Params) -> Self {
        Tape { params, nodes: Vec::new(), grad_enabled: false }
    }

    /// Records a constant input (no gradient).
    pub fn input(&mut self, t: Tensor) -> Var {
        self.nodes.push(Node { op: Op::Input, value: Some(t), needs_grad: false });
        Var(self.nodes.len() - 1)
    }

    /// Records a use of parameter `id`.
    pub fn param(&mut self, id: ParamId) -> Var {
        let needs_grad = self.grad_enabled;
        self.nodes.push(Node { op: Op::Param(id), value: None, needs_grad });
        Var(self.nodes.len() - 1)
    }

    /// The value of `v`.
    ///
    /// # Panics
    /// If `v` was freed by [`Tape::backward`] (which consumes the tape, so this cannot happen from outside).
    pub fn value(&self, v: Var) -> &Tensor {
        let node = &self.nodes[v.0];
        match node.op {
            Op::Param(id) => self.params.get(id),
            _ => node.value.as_ref().expect("value already freed by the backward pass"),
        }
    }

    /// Whether a gradient must flow into `v`.
    fn needs_grad(&self, v: Var) -> bool {
        self.nodes[v.0].needs_grad
    }

    /// Appends `op` with its computed `value`; `started` is when the op began (for the profile).
    fn push(&mut self, op: Op, value: Tensor, started: Option<std::time::Instant>) -> Var {
        profile::record(op.name(), false, started);
        let needs_grad = op.inputs().iter().any(|&v| self.needs_grad(v));
        self.nodes.push(Node { op, value: Some(value), needs_grad });
        Var(self.nodes.len() - 1)
    }

    /// Reverse-mode differentiation of the scalar `loss`: the gradient of every parameter (zero for those
    /// `loss` does not depend on). Consumes the tape, freeing each node's memory once it has been used.
    pub fn backward(mut self, loss: Var) -> Result<Grads> {
        if self.value(loss).numel() != 1 {
            return shape_err!("backward: the loss must have one element, got shape {:?}", self.value(loss).shape());
        }
        let mut param_grads: Vec<Option<Tensor>> = vec![None; self.params.len()];
        self.nodes.truncate(loss.0 + 1);
        let mut grads: Vec<Option<Tensor>> = (0..self.nodes.len()).map(|_| None).collect();
        grads[loss.0] = Some(Tensor::full(self.value(loss).shape(), 1.0));
        while let Some(node) = self.nodes.pop() {
            let gout = grads.pop().flatten();
            let (Some(gout), true) = (gout, node.needs_grad) else { continue };
            if let Op::Param(id) = node.op {
                accumulate(&mut param_grads[id.0], gout);
                continue;
            }
            let timer = profile::start();
            let input_grads = node.op.backward(&self, gout)?;
            profile::record(node.op.name(), true, timer);
            for (v, g) in input_grads {
                debug_assert_eq!(g.shape(), self.value(v).shape(), "gradient shape of {v:?}");
                accumulate(&mut grads[v.0], g);
            }
        }
        let grads = param_grads
            .into_iter()
            .zip(self.params.tensors())
            .map(|(g, p)| g.unwrap_or_else(|| Tensor::zeros(p.shape())))
            .collect();
        Ok(Grads(grads))
    }
}

/// `slot += g`, or `slot = g` when empty.
fn accumulate(slot: &mut Option<Tensor>, g: Tensor) {
    match slot {
        Some(acc) => acc.add_assign(&g),
        None => *slot = Some(g),
    }
}

impl fmt::Display for Tape<'_> {
    /// One line per node: `%i = op(inputs) [shape]`, parameters by name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, node) in self.nodes.iter().enumerate() {
            let shape = match (&node.op, &node.value) {
                (Op::Param(id), _) => format!("{:?} {}", self.params.get(*id).shape(), self.params.name(*id)),
                (_, Some(v)) => format!("{:?}", v.shape()),
                (_, None) => "freed".to_string(),
            };
            writeln!(f, "%{i} = {} {shape}", node.op)?;
        }
        Ok(())
    }
}
