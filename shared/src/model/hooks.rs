//! Reading and editing the residual stream while the forward pass runs.
//!
//! The forward pass calls a [`Hook`] at four named points of every block, observer-style: a hook
//! says which points it wants, and may return an edited activation. Analyses (capturing
//! activations, ablating a direction, adding a vector) are hooks; none of them copies the forward
//! pass. [`NoHook`] wants nothing, so the forward pass skips every call.

use std::collections::BTreeMap;

use burn::tensor::Tensor;

/// The activations a hook can see in block `l` (METHOD §1).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    /// The block's input, `x^l`.
    ResidPre,
    /// What the attention sub-layer adds to the stream.
    AttnOut,
    /// What the MLP sub-layer adds to the stream.
    MlpOut,
    /// The block's output (equal to the next block's `ResidPre`).
    ResidPost,
}

impl HookPoint {
    pub const ALL: [HookPoint; 4] = [
        HookPoint::ResidPre,
        HookPoint::AttnOut,
        HookPoint::MlpOut,
        HookPoint::ResidPost,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HookPoint::ResidPre => "resid_pre",
            HookPoint::AttnOut => "attn_out",
            HookPoint::MlpOut => "mlp_out",
            HookPoint::ResidPost => "resid_post",
        }
    }
}

/// Where a hook call happens.
#[derive(Debug, Clone, Copy)]
pub struct HookContext {
    pub layer: usize,
    pub point: HookPoint,
    /// Index of the first position of this call in the whole sequence: 0 for a prompt, the
    /// number of cached positions when decoding one token at a time.
    pub offset: usize,
}

/// An observer of (and editor for) the residual stream.
pub trait Hook: Send {
    /// Whether [`Hook::at`] should be called at this point; returning `false` lets the forward
    /// pass skip the call entirely.
    fn wants(&self, layer: usize, point: HookPoint) -> bool {
        let _ = (layer, point);
        true
    }

    /// Sees the activation at a point and returns it, edited or not.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`, `seq` being the positions of this call (see
    ///   [`HookContext::offset`]); the result must have the same shape.
    fn at(&mut self, ctx: &HookContext, x: Tensor<3>) -> Tensor<3>;
}

/// The zero-cost "no hook".
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHook;

impl Hook for NoHook {
    #[inline]
    fn wants(&self, _: usize, _: HookPoint) -> bool {
        false
    }

    #[inline]
    fn at(&mut self, _: &HookContext, x: Tensor<3>) -> Tensor<3> {
        x
    }
}

impl<H: Hook + ?Sized> Hook for &mut H {
    fn wants(&self, layer: usize, point: HookPoint) -> bool {
        (**self).wants(layer, point)
    }

    fn at(&mut self, ctx: &HookContext, x: Tensor<3>) -> Tensor<3> {
        (**self).at(ctx, x)
    }
}

/// Two hooks in sequence: the first edits, the second sees the edited value.
impl<A: Hook, B: Hook> Hook for (A, B) {
    fn wants(&self, layer: usize, point: HookPoint) -> bool {
        self.0.wants(layer, point) || self.1.wants(layer, point)
    }

    fn at(&mut self, ctx: &HookContext, x: Tensor<3>) -> Tensor<3> {
        let x = if self.0.wants(ctx.layer, ctx.point) {
            self.0.at(ctx, x)
        } else {
            x
        };
        if self.1.wants(ctx.layer, ctx.point) {
            self.1.at(ctx, x)
        } else {
            x
        }
    }
}

/// Records chosen points at chosen positions, counted from the end (1 = the last token).
///
/// With left-padded batches position `-k` is aligned across prompts (METHOD §2), so the
/// captured `[batch, positions, d_model]` tensors line up prompt by prompt.
#[derive(Debug)]
pub struct Capture {
    points: Vec<(usize, HookPoint)>,
    from_end: Vec<usize>,
    captured: BTreeMap<(usize, HookPoint), Tensor<3>>,
}

impl Capture {
    /// `from_end` lists positions as distances from the end, e.g. `[5, 4, 3, 2, 1]` for the last
    /// five tokens in order; an empty list captures every position.
    pub fn new(points: Vec<(usize, HookPoint)>, from_end: Vec<usize>) -> Self {
        Capture {
            points,
            from_end,
            captured: BTreeMap::new(),
        }
    }

    /// One point at every layer.
    pub fn every_layer(n_layers: usize, point: HookPoint, from_end: Vec<usize>) -> Self {
        Capture::new((0..n_layers).map(|l| (l, point)).collect(), from_end)
    }

    /// The captured activation, `[batch, positions, d_model]`.
    pub fn get(&self, layer: usize, point: HookPoint) -> Option<&Tensor<3>> {
        self.captured.get(&(layer, point))
    }

    pub fn into_captured(self) -> BTreeMap<(usize, HookPoint), Tensor<3>> {
        self.captured
    }
}

impl Hook for Capture {
    fn wants(&self, layer: usize, point: HookPoint) -> bool {
        self.points.contains(&(layer, point))
    }

    fn at(&mut self, ctx: &HookContext, x: Tensor<3>) -> Tensor<3> {
        let [_, seq, _] = x.dims();
        let kept = if self.from_end.is_empty() {
            x.clone()
        } else {
            let picked: Vec<Tensor<3>> = self
                .from_end
                .iter()
                .filter(|&&k| k >= 1 && k <= seq)
                .map(|&k| x.clone().narrow(1, seq - k, 1))
                .collect();
            if picked.is_empty() {
                return x;
            }
            Tensor::cat(picked, 1)
        };
        self.captured.insert((ctx.layer, ctx.point), kept);
        x
    }
}

/// Directional ablation (METHOD §5): `x <- x - (x . r^) r^` at every layer on `resid_pre`,
/// `attn_out` and `mlp_out`, so no component along `r^` survives anywhere in the stream.
#[derive(Debug, Clone)]
pub struct DirectionalAblation {
    /// Unit direction, `[d_model]`.
    unit: Tensor<1>,
}

impl DirectionalAblation {
    /// Normalises `direction` (any non-zero vector) to unit length.
    pub fn new(direction: Tensor<1>) -> Self {
        let norm = direction.clone().square().sum().sqrt();
        DirectionalAblation {
            unit: direction / norm,
        }
    }

    pub fn unit(&self) -> &Tensor<1> {
        &self.unit
    }
}

impl Hook for DirectionalAblation {
    fn wants(&self, _: usize, point: HookPoint) -> bool {
        point != HookPoint::ResidPost
    }

    fn at(&mut self, _: &HookContext, x: Tensor<3>) -> Tensor<3> {
        let [d] = self.unit.dims();
        let column = self.unit.clone().reshape([1, d, 1]);
        let along = x.clone().matmul(column); // [batch, seq, 1]
        x - along * self.unit.clone().reshape([1, 1, d])
    }
}

/// Activation addition (METHOD §5): `x^l <- x^l + c v` on `resid_pre` of block `l`, at every
/// position.
#[derive(Debug, Clone)]
pub struct ActivationAddition {
    layer: usize,
    /// `c v`, `[d_model]`.
    scaled: Tensor<1>,
}

impl ActivationAddition {
    pub fn new(layer: usize, vector: Tensor<1>, coeff: f32) -> Self {
        ActivationAddition {
            layer,
            scaled: vector * coeff,
        }
    }
}

impl Hook for ActivationAddition {
    fn wants(&self, layer: usize, point: HookPoint) -> bool {
        layer == self.layer && point == HookPoint::ResidPre
    }

    fn at(&mut self, _: &HookContext, x: Tensor<3>) -> Tensor<3> {
        let [d] = self.scaled.dims();
        x + self.scaled.clone().reshape([1, 1, d])
    }
}
