//! Named parameters (PyTorch `state_dict` names) and their gradients, on any [`Backend`].

use crate::backend::{Backend, Cpu};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::HashMap;

/// Index of a parameter in a [`Params`] store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub usize);

/// An ordered set of named tensors on backend `B` (which the tape runs its ops on). The order is the registration
/// order, which is PyTorch's `model.parameters()` order, so reductions over all parameters visit them as PyTorch
/// does.
#[derive(Clone, Debug, Default)]
pub struct Params<B: Backend = Cpu> {
    backend: B,
    names: Vec<String>,
    tensors: Vec<Tensor<B>>,
    index: HashMap<String, usize>,
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

    /// A copy of every tensor on `backend` (the host is `&Cpu`), same names and order.
    pub fn to_backend<C: Backend>(&self, backend: &C) -> Result<Params<C>> {
        let tensors = self.tensors.iter().map(|t| t.to_backend(backend)).collect::<Result<_>>()?;
        Ok(Params { backend: backend.clone(), names: self.names.clone(), tensors, index: self.index.clone() })
    }

    /// Registers `tensor` under `name` (which must be new).
    pub fn add(&mut self, name: &str, tensor: Tensor<B>) -> ParamId {
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
    pub fn tensors_mut(&mut self) -> &mut [Tensor<B>] {
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
