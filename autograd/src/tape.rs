//! The tape: nodes in execution order, and the reverse sweep over them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use tensor::{bail, Result, Tensor};

use crate::backward::{backward_rule, terms_gradients, RhsGradient};
use crate::op::{NodeId, Op};
use crate::param::ParamId;
use crate::var::Var;

pub(crate) struct Node {
    pub op: Op,
    /// Shape of the node's value, to check gradients against.
    pub shape: Vec<usize>,
}

pub(crate) struct TapeState {
    pub nodes: Vec<Node>,
    pub recording: bool,
    /// Bumped when `backward` consumes the nodes, so stale `Var`s are caught.
    pub generation: u64,
}

/// A recording of tensor ops, for one forward and one backward pass.
///
/// Cheap to clone (a shared handle); every `Var` made on it holds one. [`Tape::backward`]
/// consumes the recorded nodes, so a tape holds nothing once a step is done.
#[derive(Clone)]
pub struct Tape(pub(crate) Rc<RefCell<TapeState>>);

impl Default for Tape {
    fn default() -> Self {
        Tape::new()
    }
}

impl Tape {
    /// A tape that records.
    pub fn new() -> Self {
        Tape(Rc::new(RefCell::new(TapeState { nodes: Vec::new(), recording: true, generation: 0 })))
    }

    /// A tape that records nothing: every `Var` on it is a constant, so running a model on it
    /// costs only the forward computation.
    pub fn inference() -> Self {
        let tape = Tape::new();
        tape.0.borrow_mut().recording = false;
        tape
    }

    pub fn is_recording(&self) -> bool {
        self.0.borrow().recording
    }

    /// Number of recorded nodes.
    pub fn len(&self) -> usize {
        self.0.borrow().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn same(&self, other: &Tape) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.0.borrow().generation
    }

    /// Appends a node and returns its id.
    pub(crate) fn push(&self, op: Op, shape: Vec<usize>) -> NodeId {
        let mut state = self.0.borrow_mut();
        state.nodes.push(Node { op, shape });
        state.nodes.len() - 1
    }

    /// Lifts a parameter onto the tape; its gradient will come back under `id`.
    pub fn param(&self, id: ParamId, value: &Tensor) -> Var {
        self.leaf_node(Some(id), value)
    }

    /// A leaf whose gradient is wanted (read it back with [`Gradients::wrt`]).
    pub fn leaf(&self, value: &Tensor) -> Var {
        self.leaf_node(None, value)
    }

    fn leaf_node(&self, param: Option<ParamId>, value: &Tensor) -> Var {
        if !self.is_recording() {
            return Var::constant(value.clone());
        }
        let node = self.push(Op::Leaf { param }, value.shape().to_vec());
        Var::on_tape(value.clone(), self.clone(), node)
    }

    /// Runs the reverse sweep from `loss` (a tensor with one element) and returns the gradient
    /// of every parameter and leaf that `loss` depends on. Consumes the recorded nodes.
    pub fn backward(self, loss: &Var) -> Result<Gradients> {
        let Some(loss_node) = loss.node_on(&self)? else {
            bail!("backward", "the loss does not depend on anything recorded on this tape");
        };
        if loss.value().numel() != 1 {
            bail!("backward", "the loss must have one element, got shape {:?}", loss.value().shape());
        }
        let nodes = {
            let mut state = self.0.borrow_mut();
            state.generation += 1;
            std::mem::take(&mut state.nodes)
        };
        let mut grads: Vec<Option<Tensor>> = (0..nodes.len()).map(|_| None).collect();
        grads[loss_node] = Some(Tensor::ones(loss.value().shape()).to_device(&loss.value().device())?);
        let mut out = Gradients::default();
        // Nodes after the loss cannot affect it.
        let mut nodes = nodes;
        nodes.truncate(loss_node + 1);
        while let Some(node) = nodes.pop() {
            let id = nodes.len();
            let Some(g) = grads[id].take() else { continue };
            if g.shape() != node.shape.as_slice() {
                bail!("backward", "gradient of shape {:?} for a node of shape {:?}", g.shape(), node.shape);
            }
            match node.op {
                Op::Leaf { param: Some(p) } => {
                    // A parameter lifted more than once (a tied weight) gets the sum.
                    let total = match out.params.remove(&p) {
                        Some(acc) => acc.add(&g)?,
                        None => g,
                    };
                    out.params.insert(p, total);
                }
                Op::Leaf { param: None } => {
                    out.leaves.insert((self.generation() - 1, id), g);
                }
                // A narrowed view's gradient is added into its rows of the input's gradient
                // when that already exists, instead of padded with zeros to the input's size
                // and added to it whole: a long context split into prefix and latents made
                // two full-size gradients of its embeddings and a full-size sum.
                Op::Narrow { x, axis, start, .. } if grads[x].is_some() => {
                    let mut acc = grads[x].take().expect("checked by the guard");
                    let sum = acc.narrow(axis, start, g.shape()[axis])?.add(&g)?;
                    acc.write_narrow(axis, start, &sum)?;
                    grads[x] = Some(acc);
                }
                // A normed input's gradient added into the gradient that input already has (the
                // residual stream's, from the layers above) by the layer norm's backward as it
                // makes each row, instead of made on its own and then added.
                Op::LayerNorm { x: Some(x), weight, bias, input, weight_value, mean, rstd }
                    if grads[x].is_some() =>
                {
                    let acc = grads[x].take().expect("checked by the guard");
                    let (sum, dw, db) =
                        input.layer_norm_backward_add(acc, (&weight_value, &mean, &rstd), &g)?;
                    grads[x] = Some(sum);
                    for (n, t) in [(weight, dw), (bias, db)] {
                        if let Some(n) = n {
                            add_gradient(&mut grads[n], t)?;
                        }
                    }
                }
                // The left operand's gradient `g bᵀ` added into the gradient that input already
                // has (a normed input read by the q, k and v projections) by a product that
                // accumulates in place, instead of made on its own and then added.
                Op::Matmul { lhs: Some(x), rhs, bias, residual, a, b, lhs_times: None }
                    if grads[x].is_some() && g.shape()[..g.rank() - 1] == a.shape()[..a.rank() - 1] =>
                {
                    for (n, t) in terms_gradients((bias, residual), &g)? {
                        add_gradient(&mut grads[n], t)?;
                    }
                    let acc = grads[x].take().expect("checked by the guard");
                    match rhs {
                        Some(n) => {
                            let db = RhsGradient::of(&a, &b, &g)?;
                            let (sum, product) = acc.matmul_add_pair((&g, &b.t()?), (&db.lhs, &db.rhs))?;
                            grads[x] = Some(sum);
                            add_gradient(&mut grads[n], db.finish(product)?)?;
                        }
                        None => grads[x] = Some(acc.matmul_add(&g, &b.t()?)?),
                    }
                }
                op => {
                    for (input, gi) in backward_rule(op, g)? {
                        add_gradient(&mut grads[input], gi)?;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Adds `g` to a node's gradient (which becomes `g` where it has none yet).
fn add_gradient(grad: &mut Option<Tensor>, g: Tensor) -> Result<()> {
    *grad = Some(match grad.take() {
        Some(acc) => acc.add(&g)?,
        None => g,
    });
    Ok(())
}

/// Gradients from one backward pass.
#[derive(Default)]
pub struct Gradients {
    params: HashMap<ParamId, Tensor>,
    leaves: HashMap<(u64, NodeId), Tensor>,
}

impl std::fmt::Debug for Gradients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gradients({} parameters, {} leaves)", self.params.len(), self.leaves.len())
    }
}

impl Gradients {
    /// The gradient of a parameter, if the loss depended on it.
    pub fn get(&self, id: ParamId) -> Option<&Tensor> {
        self.params.get(&id)
    }

    /// Takes a parameter's gradient out.
    pub fn remove(&mut self, id: ParamId) -> Option<Tensor> {
        self.params.remove(&id)
    }

    /// Puts a parameter's gradient (back) in, e.g. after scaling it.
    pub fn insert(&mut self, id: ParamId, grad: Tensor) {
        self.params.insert(id, grad);
    }

    /// All parameter gradients.
    pub fn params(&self) -> impl Iterator<Item = (ParamId, &Tensor)> {
        self.params.iter().map(|(k, v)| (*k, v))
    }

    /// The gradient of a leaf made with [`Tape::leaf`], if the loss depended on it.
    pub fn wrt(&self, leaf: &Var) -> Option<&Tensor> {
        let (generation, node) = leaf.raw_node()?;
        self.leaves.get(&(generation, node))
    }
}
