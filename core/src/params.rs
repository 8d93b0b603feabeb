//! `Params`: a network's named tensors (torchvision names) in two flat arrays, the
//! trainable values with their gradients and the batch-norm running statistics, plus a
//! version that changes whenever either is written. This is what files load and save,
//! what the optimizer updates and what a clone copies; activations, workspaces and
//! weights derived for a kernel (folded batch norms, blocked or Winograd filters) live in
//! an `ExecutionPlan`, which keys them by [`Params::version`] so that a stale copy cannot
//! be used.

use crate::aligned::AlignedVec;
use crate::io::{NamedTensor, TensorFile};
use crate::model::{Arch, ResNetConfig};
use crate::rng::Rng;
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether a tensor is trained or is state (batch-norm running statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Trainable: has a gradient; lives in [`Params::values`].
    Param,
    /// Running statistics: no gradient; lives in [`Params::buffers`].
    Buffer,
}

/// One named tensor: where it lives in its flat array.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: Kind,
    /// Offset into [`Params::values`] or [`Params::buffers`], by `kind`.
    pub offset: usize,
    pub len: usize,
}

/// Every version ever handed out, across all `Params`: versions are unique, so a cache
/// keyed by one can never match another instance's tensors by accident.
static VERSIONS: AtomicU64 = AtomicU64::new(1);

fn next_version() -> u64 {
    VERSIONS.fetch_add(1, Ordering::Relaxed)
}

/// A network's parameters and running statistics.
#[derive(Clone, Debug)]
pub struct Params {
    config: ResNetConfig,
    entries: Vec<Entry>,
    by_name: BTreeMap<String, usize>,
    // Aligned so that every tensor whose offset is a multiple of 16 floats (all of them
    // in the zoo) starts a cache line, as the kernels read the classifier's weights here.
    values: AlignedVec<f32>,
    // Empty until a gradient is first written: inference never holds a copy of every
    // weight's size that it does not use.
    grads: AlignedVec<f32>,
    buffers: AlignedVec<f32>,
    version: u64,
}

impl Params {
    /// The tensors of the network `config` describes, initialised as torchvision does:
    /// convolutions He-normal (fan-out), batch norms weight 1 and bias 0 with running
    /// mean 0 and variance 1, the classifier uniform in +-1/sqrt(features).
    pub fn new(config: ResNetConfig, seed: u64) -> Result<Self> {
        let arch = Arch::of(&config)?;
        let mut p = Params::zeros(config, &arch)?;
        let mut rng = Rng::new(seed);
        for conv in arch.convs() {
            let std = (2.0 / (conv.out_channels * conv.kernel * conv.kernel) as f64).sqrt();
            let w = p.values_of_mut(&format!("{}.weight", conv.conv));
            w.iter_mut().for_each(|v| *v = (rng.normal() * std) as f32);
            p.values_of_mut(&format!("{}.weight", conv.bn)).fill(1.0);
            p.values_of_mut(&format!("{}.running_var", conv.bn)).fill(1.0);
        }
        let bound = 1.0 / (arch.features as f64).sqrt();
        for name in ["fc.weight", "fc.bias"] {
            for v in p.values_of_mut(name) {
                *v = ((rng.uniform() * 2.0 - 1.0) * bound) as f32;
            }
        }
        Ok(p)
    }

    /// The tensors of the network `config` describes, all zero: where weights are about
    /// to be loaded, without drawing random ones first (a ResNet-50's 25 M normal samples
    /// took longer than reading its file).
    pub fn zeroed(config: ResNetConfig) -> Result<Self> {
        let arch = Arch::of(&config)?;
        Params::zeros(config, &arch)
    }

    /// All tensors zero, laid out in torchvision's state-dict order.
    fn zeros(config: ResNetConfig, arch: &Arch) -> Result<Self> {
        let (entries, n_values, n_buffers) = layout(arch)?;
        let by_name = entries.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
        Ok(Params {
            config,
            entries,
            by_name,
            values: AlignedVec::zeroed(n_values),
            grads: AlignedVec::new(),
            buffers: AlignedVec::zeroed(n_buffers),
            version: next_version(),
        })
    }

    /// The entries a `Params` of `config` has, without allocating its tensors (an
    /// execution plan finds its weights, gradients and statistics by these offsets).
    pub fn layout_of(config: &ResNetConfig) -> Result<Vec<Entry>> {
        Ok(layout(&Arch::of(config)?)?.0)
    }

    /// The architecture these tensors belong to.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// Every tensor, in torchvision's state-dict order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Changes whenever values or buffers may have been written; unique across all
    /// `Params` (a clone keeps its source's version, as it holds the same tensors).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of trainable values.
    pub fn param_count(&self) -> usize {
        self.values.len()
    }

    /// The entry named `name`.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// The values of the tensor `name` (parameter or buffer).
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        let e = self.entry(name)?;
        let src = match e.kind {
            Kind::Param => &self.values,
            Kind::Buffer => &self.buffers,
        };
        Some(&src[e.offset..e.offset + e.len])
    }

    /// The tensor `name`, which the architecture guarantees exists. Panics otherwise:
    /// for names built from the same [`Arch`] as these parameters.
    pub fn tensor(&self, name: &str) -> &[f32] {
        self.get(name)
            .unwrap_or_else(|| panic!("no tensor {name} in {}", self.config.name))
    }

    /// The values of the tensor `name`, for writing (bumps the version).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut [f32]> {
        let e = self.entry(name)?.clone();
        self.version = next_version();
        let dst = match e.kind {
            Kind::Param => &mut self.values,
            Kind::Buffer => &mut self.buffers,
        };
        Some(&mut dst[e.offset..e.offset + e.len])
    }

    fn values_of_mut(&mut self, name: &str) -> &mut [f32] {
        self.get_mut(name).unwrap_or_else(|| panic!("no tensor {name}"))
    }

    /// All trainable values, in [`Params::entries`] order.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// All trainable values, for writing (bumps the version).
    pub fn values_mut(&mut self) -> &mut [f32] {
        self.version = next_version();
        &mut self.values
    }

    /// The gradients, laid out as [`Params::values`]; empty until a gradient is first
    /// written (as PyTorch's `.grad` is `None` before a backward pass), so that inference
    /// does not hold them.
    pub fn grads(&self) -> &[f32] {
        &self.grads
    }

    /// The gradients, for writing, zero where none were written yet (gradients are not
    /// derived from, so no version bump).
    pub fn grads_mut(&mut self) -> &mut [f32] {
        self.allocate_grads();
        &mut self.grads
    }

    /// Values and gradients at once, for an optimizer step (bumps the version).
    pub fn values_and_grads_mut(&mut self) -> (&mut [f32], &mut [f32]) {
        self.allocate_grads();
        self.version = next_version();
        (&mut self.values, &mut self.grads)
    }

    /// Values to read and gradients to accumulate into, for a backward pass (no version
    /// bump: the values are not written).
    pub fn values_and_grads(&mut self) -> (&[f32], &mut [f32]) {
        self.allocate_grads();
        (&self.values, &mut self.grads)
    }

    /// Gives the gradients their zeroed storage on first use.
    fn allocate_grads(&mut self) {
        if self.grads.len() != self.values.len() {
            self.grads.resize_zeroed(self.values.len());
        }
    }

    /// Values to read and running statistics to update, for a training forward pass
    /// (bumps the version: the statistics change).
    pub fn values_and_buffers_mut(&mut self) -> (&[f32], &mut [f32]) {
        self.version = next_version();
        (&self.values, &mut self.buffers)
    }

    /// All running statistics, in [`Params::entries`] order.
    pub fn buffers(&self) -> &[f32] {
        &self.buffers
    }

    /// All running statistics, for writing (bumps the version).
    pub fn buffers_mut(&mut self) -> &mut [f32] {
        self.version = next_version();
        &mut self.buffers
    }

    /// Replaces every gradient from a flat array laid out as [`Params::grads`] (e.g. the
    /// average of data-parallel workers' gradients).
    pub fn set_grads(&mut self, flat: &[f32]) -> Result<()> {
        check_flat("gradient", self.values.len(), flat.len())?;
        self.grads_mut().copy_from_slice(flat);
        Ok(())
    }

    /// Replaces every running statistic from a flat array laid out as [`Params::buffers`].
    pub fn set_buffers(&mut self, flat: &[f32]) -> Result<()> {
        check_flat("running-statistic", self.buffers.len(), flat.len())?;
        self.buffers_mut().copy_from_slice(flat);
        Ok(())
    }

    /// Every tensor with its name and shape, parameters and buffers alike.
    pub fn to_named_tensors(&self) -> Vec<NamedTensor> {
        self.entries
            .iter()
            .map(|e| NamedTensor::new(&e.name, e.shape.clone(), self.tensor(&e.name).to_vec()))
            .collect()
    }

    /// Copies every tensor of `file` in, checking names and shapes. All problems are
    /// reported together: misshapen tensors, missing keys and unexpected keys. `ignore`
    /// picks out tensors that are not weights (a mean image, optimizer state).
    pub fn load_tensors(&mut self, file: &TensorFile, ignore: &dyn Fn(&str) -> bool) -> Result<()> {
        let by_name: BTreeMap<&str, &NamedTensor> = file.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut used = BTreeSet::new();
        let mut missing = Vec::new();
        let mut misshapen = Vec::new();
        for e in self.entries.clone() {
            match by_name.get(e.name.as_str()) {
                None => missing.push(e.name.clone()),
                Some(t) if t.shape != e.shape => {
                    misshapen.push(format!("{}: expected {:?}, found {:?}", e.name, e.shape, t.shape))
                }
                Some(t) => {
                    self.values_of_mut(&e.name).copy_from_slice(&t.data);
                    used.insert(e.name.clone());
                }
            }
        }
        let unexpected: Vec<&str> = file
            .tensors
            .iter()
            .map(|t| t.name.as_str())
            .filter(|n| !used.contains(*n) && !ignore(n))
            .filter(|n| !misshapen.iter().any(|m| m.starts_with(&format!("{n}:"))))
            .collect();
        if missing.is_empty() && misshapen.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        let mut msg = format!("weights do not fit {}:", self.config.name);
        if !misshapen.is_empty() {
            msg += &format!("\n  wrong shapes: {}", misshapen.join("; "));
        }
        if !missing.is_empty() {
            msg += &format!("\n  missing keys ({}): {}", missing.len(), missing.join(", "));
        }
        if !unexpected.is_empty() {
            msg += &format!("\n  unexpected keys ({}): {}", unexpected.len(), unexpected.join(", "));
        }
        Err(Error::Load(msg))
    }
}

/// The entries of the network `arch` describes, in torchvision's state-dict order, with
/// the lengths of the value and buffer arrays they index.
fn layout(arch: &Arch) -> Result<(Vec<Entry>, usize, usize)> {
    let mut specs: Vec<(String, Vec<usize>, Kind)> = Vec::new();
    let conv_bn = |specs: &mut Vec<_>, c: &crate::model::ConvBn| {
        specs.push((format!("{}.weight", c.conv), c.weight_shape(), Kind::Param));
        for (field, kind) in [
            ("weight", Kind::Param),
            ("bias", Kind::Param),
            ("running_mean", Kind::Buffer),
            ("running_var", Kind::Buffer),
        ] {
            specs.push((format!("{}.{field}", c.bn), vec![c.out_channels], kind));
        }
    };
    conv_bn(&mut specs, &arch.stem);
    for b in &arch.blocks {
        for s in &b.stages {
            conv_bn(&mut specs, s);
        }
        if let crate::model::ShortcutKind::Projection(p) = &b.shortcut {
            conv_bn(&mut specs, p);
        }
    }
    specs.push(("fc.weight".into(), vec![arch.classes, arch.features], Kind::Param));
    specs.push(("fc.bias".into(), vec![arch.classes], Kind::Param));
    let (mut n_values, mut n_buffers) = (0usize, 0usize);
    let mut entries = Vec::with_capacity(specs.len());
    for (name, shape, kind) in specs {
        let len = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let len = len.ok_or_else(|| Error::Config(format!("{name}: shape {shape:?} overflows")))?;
        let total = match kind {
            Kind::Param => &mut n_values,
            Kind::Buffer => &mut n_buffers,
        };
        let offset = *total;
        *total = total
            .checked_add(len)
            .ok_or_else(|| Error::Config("the network has more values than memory can address".into()))?;
        entries.push(Entry {
            name,
            shape,
            kind,
            offset,
            len,
        });
    }
    Ok((entries, n_values, n_buffers))
}

fn check_flat(what: &str, want: usize, found: usize) -> Result<()> {
    if want != found {
        return Err(Error::Shape(format!("expected {want} {what} values, found {found}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_follows_torchvision_order_and_initialisation_the_layers() {
        for (name, count) in [
            ("resnet20", 269_722),
            ("resnet18", 11_689_512),
            ("resnet50", 25_557_032),
        ] {
            let config = ResNetConfig::named(name).unwrap();
            let p = Params::new(config.clone(), 3).unwrap();
            assert_eq!(p.param_count(), count, "{name}");
            assert_eq!(Params::layout_of(&config).unwrap(), p.entries());
            let names: Vec<&str> = p.entries().iter().map(|e| e.name.as_str()).collect();
            assert_eq!(
                names[..5],
                [
                    "conv1.weight",
                    "bn1.weight",
                    "bn1.bias",
                    "bn1.running_mean",
                    "bn1.running_var"
                ]
            );
            assert_eq!(names[names.len() - 2..], ["fc.weight", "fc.bias"]);
            assert!(p.tensor("bn1.weight").iter().all(|&v| v == 1.0));
            assert!(p.tensor("layer1.0.bn2.running_var").iter().all(|&v| v == 1.0));
            assert!(p.tensor("layer1.0.bn2.bias").iter().all(|&v| v == 0.0));
            // He normal, fan-out: the sample standard deviation is close to
            // sqrt(2 / (K kh kw)).
            let w = p.tensor("layer1.0.conv1.weight");
            let shape = &p.entry("layer1.0.conv1.weight").unwrap().shape;
            let fan_out = (shape[0] * shape[2] * shape[3]) as f64;
            let sd = (w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
            assert!((sd / (2.0 / fan_out).sqrt() - 1.0).abs() < 0.1, "{name}: {sd}");
            let bound = 1.0 / (p.entry("fc.weight").unwrap().shape[1] as f32).sqrt();
            assert!(p.tensor("fc.weight").iter().all(|v| v.abs() <= bound));
        }
    }

    #[test]
    fn every_write_gives_a_new_unique_version() {
        let mut a = Params::new(ResNetConfig::named("resnet8").unwrap(), 1).unwrap();
        let b = a.clone();
        assert_eq!(a.version(), b.version());
        let v0 = a.version();
        a.values_mut()[0] = 1.0;
        let v1 = a.version();
        a.buffers_mut()[0] = 1.0;
        let v2 = a.version();
        a.get_mut("fc.bias").unwrap()[0] = 2.0;
        assert!(v0 != v1 && v1 != v2 && v2 != a.version());
        let c = Params::new(ResNetConfig::named("resnet8").unwrap(), 1).unwrap();
        assert_ne!(c.version(), a.version());
        assert_ne!(c.version(), v0);
    }

    #[test]
    fn zeroed_has_the_layout_of_new_and_only_zeros() {
        let config = ResNetConfig::named("resnet14").unwrap();
        let z = Params::zeroed(config.clone()).unwrap();
        assert_eq!(z.entries(), Params::new(config, 1).unwrap().entries());
        assert!(z.values().iter().chain(z.buffers()).all(|&v| v == 0.0));
        assert!(Params::zeroed(ResNetConfig::named("resnet14").unwrap().with_classes(0)).is_err());
    }

    #[test]
    fn gradients_take_memory_only_once_written() {
        let mut p = Params::new(ResNetConfig::named("resnet8").unwrap(), 1).unwrap();
        assert!(p.grads().is_empty());
        assert!(p.clone().grads().is_empty());
        let v0 = p.version();
        assert!(p.grads_mut().iter().all(|&g| g == 0.0));
        assert_eq!(p.grads().len(), p.param_count());
        assert_eq!(p.version(), v0);
        p.grads_mut()[3] = 2.0;
        assert_eq!(p.grads()[3], 2.0, "a second write keeps the first");
        let mut q = Params::new(ResNetConfig::named("resnet8").unwrap(), 1).unwrap();
        assert!(q.set_grads(&[1.0]).is_err());
        assert!(q.grads().is_empty(), "a refused write allocates nothing");
        q.set_grads(p.grads()).unwrap();
        assert_eq!(q.grads(), p.grads());
        let mut r = Params::new(ResNetConfig::named("resnet8").unwrap(), 1).unwrap();
        let (values, grads) = r.values_and_grads();
        assert_eq!(values.len(), grads.len());
    }

    #[test]
    fn load_reports_every_mismatch_together() {
        let src = Params::new(ResNetConfig::named("resnet8").unwrap(), 1).unwrap();
        let mut file = TensorFile {
            tensors: src.to_named_tensors(),
            metadata: BTreeMap::new(),
        };
        let mut dst = Params::new(ResNetConfig::named("resnet8").unwrap(), 2).unwrap();
        dst.load_tensors(&file, &|_| false).unwrap();
        assert_eq!(dst.values(), src.values());
        assert_eq!(dst.buffers(), src.buffers());
        file.tensors.retain(|t| t.name != "layer2.0.bn1.bias");
        file.tensors
            .iter_mut()
            .find(|t| t.name == "layer3.0.conv1.weight")
            .unwrap()
            .shape = vec![64, 16, 3, 3];
        file.tensors.push(NamedTensor::new("extra.weight", vec![1], vec![0.0]));
        let err = dst.load_tensors(&file, &|_| false).unwrap_err().to_string();
        assert!(
            err.contains("layer3.0.conv1.weight: expected [64, 32, 3, 3], found [64, 16, 3, 3]"),
            "{err}"
        );
        assert!(err.contains("missing keys (1): layer2.0.bn1.bias"), "{err}");
        assert!(err.contains("unexpected keys (1): extra.weight"), "{err}");
    }
}
