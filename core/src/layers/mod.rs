//! Layers: parameters, gradients and what each backward pass needs, with forward and
//! backward side by side in one file per layer (Darknet / llm.c style). Forward passes
//! write into buffers the layer owns; backward passes take the forward input again,
//! overwrite the input gradient and *accumulate* parameter gradients.

pub mod batchnorm;
pub mod conv;
pub mod linear;
pub mod loss;
pub mod pool;
pub mod relu;
pub mod shortcut;

/// A trainable tensor with its gradient.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub shape: Vec<usize>,
    /// The values. Code that writes them directly, rather than through a model's
    /// `visit` (which loaders and optimisers use), must call [`Param::touch`] so that
    /// transforms cached from them (Winograd filters) are rebuilt.
    pub value: Vec<f32>,
    pub grad: Vec<f32>,
    /// Bumped by [`Param::touch`]; caches derived from `value` remember it.
    pub generation: u64,
}

impl Param {
    /// A parameter holding `value`, with a zero gradient.
    pub fn new(shape: Vec<usize>, value: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), value.len());
        let grad = vec![0.0; value.len()];
        Param {
            shape,
            value,
            grad,
            generation: 0,
        }
    }

    /// Marks `value` as changed.
    pub fn touch(&mut self) {
        self.generation += 1;
    }

    /// A parameter filled with `v`.
    pub fn filled(shape: Vec<usize>, v: f32) -> Self {
        let n = shape.iter().product();
        Param::new(shape, vec![v; n])
    }
}

/// The dimensions of an NCHW activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Dims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Dims {
    /// Shorthand constructor.
    pub fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Dims { n, c, h, w }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pixels per plane.
    pub fn plane(&self) -> usize {
        self.h * self.w
    }
}

/// Whether batch norm uses batch statistics (and updates its running averages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Training: batch statistics, running averages updated.
    Train,
    /// Inference: running statistics.
    Eval,
}

/// A named tensor of a model, as a visitor sees it.
pub enum Slot<'a> {
    /// A trainable parameter.
    Param(&'a mut Param),
    /// A non-trainable state tensor (batch-norm running statistics), with its shape.
    Buffer(&'a [usize], &'a mut Vec<f32>),
}

/// Callback that receives every named tensor of a model in a fixed order.
pub type Visitor<'v> = dyn FnMut(&str, Slot<'_>) + 'v;

/// Joins a name prefix and a field name with a dot.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Resizes `buf` to `len` without shrinking its capacity (no allocation once warm).
pub(crate) fn fit(buf: &mut Vec<f32>, len: usize) {
    buf.resize(len, 0.0);
}
