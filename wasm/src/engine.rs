//! The wasm crate's logic in plain Rust, on top of `resnet-core`'s public API: no
//! `JsValue` here, so it is tested natively by `cargo test -p resnet-wasm`.

use resnet_core::classifier::{default_classes, Classifier, Prediction};
use resnet_core::data::augment::{Augment, Batcher, Normalization};
use resnet_core::data::image::{IMAGENET_MEAN, IMAGENET_STD};
use resnet_core::data::Dataset;
use resnet_core::model::ResNetConfig;
use resnet_core::train::{Schedule, Sgd, StepStats, Trainer};
use resnet_core::{Error, Params, Result, Tensor};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A fresh network `arch` with `classes` outputs, initialised from `seed`, with
/// torchvision's ImageNet mean and std as preprocessing (what imported files without
/// preprocessing get too) until [`set_normalization`] replaces it.
pub fn create(arch: &str, classes: usize, seed: u64) -> Result<Classifier> {
    if classes == 0 {
        return Err(Error::Config("a classifier needs at least 1 class, found 0".into()));
    }
    let params = Params::new(ResNetConfig::named(arch)?.with_classes(classes), seed)?;
    Ok(Classifier::new(
        params,
        default_classes(classes),
        Normalization::PerChannel {
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        },
        BTreeMap::new(),
    ))
}

/// The network of `c` with a new classifier for `classes` (initialised from `seed` as a
/// fresh network's classifier), every other tensor, the batch-norm statistics and the
/// preprocessing kept: where fine-tuning on other classes starts.
pub fn with_classes(c: &Classifier, classes: Vec<String>, seed: u64) -> Result<Classifier> {
    if classes.is_empty() {
        return Err(Error::Config("a classifier needs at least 1 class, found 0".into()));
    }
    let mut params = Params::new(c.config().clone().with_classes(classes.len()), seed)?;
    let names: Vec<String> = params.entries().iter().map(|e| e.name.clone()).collect();
    for name in names.iter().filter(|n| !is_head(n)) {
        let from = c
            .params
            .get(name)
            .ok_or_else(|| Error::Config(format!("{name} is missing from the model")))?;
        let to = params
            .get_mut(name)
            .ok_or_else(|| Error::Config(format!("{name} is missing from the new model")))?;
        to.copy_from_slice(from);
    }
    Ok(Classifier::new(
        params,
        classes,
        c.normalization.clone(),
        BTreeMap::new(),
    ))
}

/// Whether the tensor `name` is the classifier's (`fc.weight`, `fc.bias`).
fn is_head(name: &str) -> bool {
    name.starts_with("fc.")
}

/// Preprocessing as JSON: `{kind: "per_channel", mean, std}` or
/// `{kind: "per_pixel_mean", height, width}`.
pub fn normalization_json(n: &Normalization) -> Value {
    match n {
        Normalization::PerChannel { mean, std } => json!({"kind": "per_channel", "mean": mean, "std": std}),
        Normalization::PerPixelMean { mean } => {
            let side = ((mean.len() / 3) as f64).sqrt() as usize;
            json!({"kind": "per_pixel_mean", "height": side, "width": side})
        }
    }
}

/// What `model.info()` returns.
pub fn info(c: &mut Classifier) -> Value {
    let parameters = c.params.param_count();
    let config = c.config();
    let layers = 2 + config.stage_blocks.iter().sum::<usize>() * if config.block.expansion() == 1 { 2 } else { 3 };
    json!({
        "architecture": config.name,
        "depth": layers,
        "parameters": parameters,
        "numClasses": config.num_classes,
        "classes": c.classes,
        "inputSize": c.input_size(),
        "inputChannels": config.in_channels,
        "preprocessing": normalization_json(&c.normalization),
        "config": serde_json::to_value(c.config()).unwrap_or(Value::Null),
        "metadata": c.metadata,
    })
}

/// Top-k answers as the native CLI prints them: `[[{index, label, probability}]]`.
pub fn predictions_json(all: &[Vec<Prediction>]) -> Value {
    Value::Array(
        all.iter()
            .map(|preds| {
                Value::Array(
                    preds
                        .iter()
                        .map(|p| json!({"index": p.index, "label": p.label, "probability": p.probability}))
                        .collect(),
                )
            })
            .collect(),
    )
}

/// Replaces the preprocessing by statistics of `data`: `per-pixel` (the paper's mean
/// image) or `per-channel` (mean and std).
pub fn set_normalization(c: &mut Classifier, data: &Dataset, kind: &str) -> Result<()> {
    c.normalization = match kind {
        "per-pixel" | "per_pixel" | "per_pixel_mean" => Normalization::per_pixel_mean(data),
        "per-channel" | "per_channel" => Normalization::per_channel(data),
        other => {
            return Err(Error::Config(format!(
                "normalisation \"{other}\" is not one of per-pixel, per-channel"
            )))
        }
    };
    Ok(())
}

/// Top-1 / top-5 accuracy and loss of the model on the first `limit` images of `data`.
pub fn evaluate(c: &mut Classifier, data: &Dataset, limit: Option<usize>, batch: usize) -> Result<Value> {
    let n = limit.unwrap_or(data.len()).min(data.len());
    let subset;
    let data = if n < data.len() {
        subset = data.subset(&(0..n).collect::<Vec<_>>())?;
        &subset
    } else {
        data
    };
    let e = c.evaluate(data, batch, &mut |_, _| {})?;
    let total = e.total.max(1) as f64;
    Ok(json!({
        "total": e.total,
        "correct": e.top1,
        "top5Correct": e.top5,
        "accuracy": e.top1 as f64 / total,
        "top5Accuracy": e.top5 as f64 / total,
        "loss": e.loss,
    }))
}

/// A data set from `n` images of `width` x `height` in `format` (`rgba` as a canvas
/// gives them, `rgb` interleaved, or `chw` planar), with labels and class names (when
/// `classes` is empty: the default names for `max(label) + 1` classes).
pub fn dataset_from_pixels(
    pixels: &[u8],
    labels: &[u32],
    width: usize,
    height: usize,
    classes: Vec<String>,
    format: &str,
) -> Result<Dataset> {
    let channels = match format {
        "rgba" => 4,
        "rgb" | "chw" => 3,
        other => {
            return Err(Error::Config(format!(
                "pixel format \"{other}\" is not one of rgba, rgb, chw"
            )))
        }
    };
    let plane = width
        .checked_mul(height)
        .ok_or_else(|| Error::Shape(format!("image size {width}x{height} overflows")))?;
    let per = plane * channels;
    let expected = per.checked_mul(labels.len());
    if per == 0 || expected != Some(pixels.len()) {
        return Err(Error::Shape(format!(
            "{} labels of {width}x{height} {format} images need {} bytes, found {}",
            labels.len(),
            expected.map_or("too many".to_string(), |e| e.to_string()),
            pixels.len()
        )));
    }
    let mut short = Vec::with_capacity(labels.len());
    for (i, &l) in labels.iter().enumerate() {
        short
            .push(u16::try_from(l).map_err(|_| Error::Shape(format!("label {l} of image {i} is above {}", u16::MAX)))?);
    }
    let images = if format == "chw" {
        pixels.to_vec()
    } else {
        let mut out = vec![0u8; 3 * plane * labels.len()];
        for (src, dst) in pixels.chunks_exact(per).zip(out.chunks_exact_mut(3 * plane)) {
            for p in 0..plane {
                for c in 0..3 {
                    dst[c * plane + p] = src[p * channels + c];
                }
            }
        }
        out
    };
    let classes = if classes.is_empty() {
        default_classes(short.iter().max().map_or(1, |&m| m as usize + 1))
    } else {
        classes
    };
    Ok(Dataset::new(images, short, classes, height, width)?)
}

/// Settings of a [`TrainSession`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub batch: usize,
    /// `paper` (divide by 10 at 50 % and 75 % of `steps`), `cosine` (to 0 at `steps`) or `constant`.
    pub schedule: String,
    /// Iterations the schedule is laid out for.
    pub steps: u64,
    /// Seed of the shuffling and augmentation.
    pub seed: u64,
    /// The paper's augmentation (pad 4, random crop, random flip).
    pub augment: bool,
    /// Data-parallel workers split each step's batch of `global_batch` images (0: just
    /// `batch`, one worker); this one computes `batch` of them from `batch_offset` on.
    /// All workers use the same seed, so together they see exactly the batches one
    /// worker would.
    pub global_batch: usize,
    pub batch_offset: usize,
    /// Only the classifier (`fc`) learns: every other parameter keeps its value (the
    /// forward and backward passes run as usual; batch-norm statistics follow the data).
    pub head_only: bool,
}

impl Default for TrainOptions {
    /// The paper's CIFAR settings (lr 0.1, momentum 0.9, weight decay 1e-4, batch 128,
    /// the multi-step schedule over 64k iterations, augmentation).
    fn default() -> Self {
        TrainOptions {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            batch: 128,
            schedule: "paper".into(),
            steps: 64_000,
            seed: 0,
            augment: true,
            global_batch: 0,
            batch_offset: 0,
            head_only: false,
        }
    }
}

/// What one computed batch measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchStats {
    pub loss: f64,
    pub correct: usize,
    pub count: usize,
}

/// A core [`Trainer`] working on a classifier's parameters, which stay in the classifier
/// (so the model can be used, saved or inspected while it trains) and are lent to the
/// trainer by reference for each call.
#[derive(Debug)]
pub struct TrainSession {
    trainer: Trainer,
    batch: usize,
    /// `(global batch, offset)` when the batch is split across workers.
    shard: Option<(usize, usize)>,
    seed: u64,
    augment: bool,
    input: Option<Tensor>,
    labels: Vec<u32>,
    head_only: bool,
}

impl TrainSession {
    /// A session at iteration 0 with the settings of `o`.
    pub fn new(o: &TrainOptions) -> Result<Self> {
        if o.batch == 0 {
            return Err(Error::Config("the batch size must be positive, found 0".into()));
        }
        let shard = (o.global_batch != 0).then_some((o.global_batch, o.batch_offset));
        if let Some((global, offset)) = shard {
            if offset + o.batch > global {
                return Err(Error::Config(format!(
                    "a worker's {} images from offset {offset} do not fit in a global batch of {global}",
                    o.batch
                )));
            }
        }
        if !(o.lr.is_finite() && o.lr >= 0.0) {
            return Err(Error::Config(format!(
                "learning rate must be finite and >= 0, found {}",
                o.lr
            )));
        }
        let schedule = match o.schedule.as_str() {
            "paper" | "multistep" => Schedule::paper(o.lr, o.steps.max(1)),
            "cosine" => Schedule::Cosine {
                base_lr: o.lr,
                total: o.steps.max(1),
                min_lr: 0.0,
            },
            "constant" => Schedule::Constant { base_lr: o.lr },
            other => {
                return Err(Error::Config(format!(
                    "schedule \"{other}\" is not one of paper, cosine, constant"
                )))
            }
        };
        Ok(TrainSession {
            trainer: Trainer::new(Sgd::new(o.momentum, o.weight_decay), schedule),
            batch: o.batch,
            shard,
            seed: o.seed,
            augment: o.augment,
            input: None,
            labels: Vec::new(),
            head_only: o.head_only,
        })
    }

    /// Iterations done so far.
    pub fn iteration(&self) -> u64 {
        self.trainer.iteration
    }

    /// The learning rate the next update will use.
    pub fn lr(&self) -> f32 {
        self.trainer.schedule.lr(self.trainer.iteration)
    }

    /// Fills the batch of the current iteration: epoch `it / batches_per_epoch`, batch
    /// `it % batches_per_epoch` of `data`, shuffled per epoch from the seed, augmented;
    /// when sharded, this worker's part of the global batch (whole batches only, so that
    /// every worker always has its share).
    fn fill(&mut self, norm: &Normalization, data: &Dataset) -> Result<usize> {
        let aug = self.augment.then(Augment::paper);
        let (global, offset) = self.shard.unwrap_or((self.batch, 0));
        let batcher = Batcher::train(data, norm, global, self.seed, aug, self.shard.is_some())?;
        let bpe = batcher.batches_per_epoch() as u64;
        if bpe == 0 {
            return Err(Error::Config(format!(
                "cannot train on {} images with batches of {global}",
                data.len()
            )));
        }
        let it = self.trainer.iteration;
        let epoch = batcher.epoch(it / bpe);
        let b = (it % bpe) as usize;
        let part = offset..offset + self.batch;
        let n = epoch.indices(b).len().min(part.end).saturating_sub(part.start);
        let shape = vec![n, 3, data.height, data.width];
        if self.input.as_ref().map(|t| t.shape()) != Some(&shape[..]) {
            self.input = Some(Tensor::zeros(shape)?);
        }
        self.labels.resize(n, 0);
        let input = self.input.as_mut().expect("set above");
        Ok(epoch.fill_part(b, part, input.data_mut(), &mut self.labels)?)
    }

    /// Forward and backward on the current batch of `data`, leaving the batch-mean
    /// gradients in the model's parameters; does not update or advance.
    pub fn compute_gradients(&mut self, c: &mut Classifier, data: &Dataset) -> Result<BatchStats> {
        let classes = c.config().num_classes;
        if data.classes.len() > classes {
            return Err(Error::Config(format!(
                "the data set has {} classes, the model only {classes}",
                data.classes.len()
            )));
        }
        let count = self.fill(&c.normalization, data)?;
        let input = self.input.take().expect("filled");
        let labels = std::mem::take(&mut self.labels);
        let r = self.trainer.compute_gradients(&mut c.params, &input, &labels);
        self.input = Some(input);
        self.labels = labels;
        let (loss, correct) = r?;
        Ok(BatchStats { loss, correct, count })
    }

    /// One SGD update from the gradients held in the model; returns the rate used, or
    /// `Error::Diverged` when a weight or statistic became non-finite or exploded.
    pub fn apply_gradients(&mut self, c: &mut Classifier) -> Result<f32> {
        let kept = self.head_only.then(|| c.params.values().to_vec());
        let lr = self.trainer.apply_gradients(&mut c.params);
        if let Some(kept) = kept {
            // Head only: every parameter but the classifier's gets its value back.
            let body: Vec<(usize, usize)> = c
                .params
                .entries()
                .iter()
                .filter(|e| e.kind == resnet_core::params::Kind::Param && !is_head(&e.name))
                .map(|e| (e.offset, e.len))
                .collect();
            let values = c.params.values_mut();
            for (at, len) in body {
                values[at..at + len].copy_from_slice(&kept[at..at + len]);
            }
        }
        resnet_core::train::trainer::check_params(&c.params, self.trainer.iteration - 1)?;
        Ok(lr)
    }

    /// [`TrainSession::compute_gradients`] then [`TrainSession::apply_gradients`].
    pub fn step(&mut self, c: &mut Classifier, data: &Dataset) -> Result<StepStats> {
        let s = self.compute_gradients(c, data)?;
        let lr = self.apply_gradients(c)?;
        Ok(StepStats {
            iteration: self.trainer.iteration - 1,
            loss: s.loss,
            accuracy: s.correct as f64 / s.count.max(1) as f64,
            lr,
        })
    }
}

/// Checks a JS number used as a seed or count: a non-negative integer below 2^53.
pub fn whole_number(v: f64, what: &str) -> Result<u64> {
    if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= 9_007_199_254_740_991.0 {
        Ok(v as u64)
    } else {
        Err(Error::Config(format!(
            "{what} must be a non-negative integer, found {v}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use resnet_core::classifier::LoadOptions;

    /// 2 classes of 8x8 images: dark and bright, with noise.
    fn toy(n: usize) -> Dataset {
        let mut px = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let l = (i % 2) as u32;
            for p in 0..64 {
                let v = if l == 0 { 40 } else { 200 } + ((i * 31 + p * 17) % 23) as u8;
                px.extend_from_slice(&[v, v / 2, 255 - v, 255]);
            }
            labels.push(l);
        }
        dataset_from_pixels(&px, &labels, 8, 8, vec![], "rgba").unwrap()
    }

    #[test]
    fn with_classes_keeps_the_body_and_head_only_training_moves_only_the_head() {
        let base = create("resnet8", 10, 4).unwrap();
        let c = with_classes(&base, vec!["a".into(), "b".into()], 9).unwrap();
        assert_eq!(c.config().num_classes, 2);
        assert_eq!(c.classes, ["a", "b"]);
        assert_eq!(c.params.get("fc.weight").unwrap().len(), 2 * 64);
        for e in c.params.entries().iter().filter(|e| !is_head(&e.name)) {
            assert_eq!(c.params.get(&e.name), base.params.get(&e.name), "{}", e.name);
        }
        assert!(with_classes(&base, vec![], 0)
            .unwrap_err()
            .to_string()
            .contains("at least 1 class"));

        let data = toy(16);
        for head_only in [true, false] {
            let mut m = c.clone();
            let mut s = TrainSession::new(&TrainOptions {
                batch: 8,
                head_only,
                augment: false,
                lr: 0.05,
                ..TrainOptions::default()
            })
            .unwrap();
            for _ in 0..3 {
                s.step(&mut m, &data).unwrap();
            }
            let moved: Vec<&str> = m
                .params
                .entries()
                .iter()
                .filter(|e| e.kind == resnet_core::params::Kind::Param)
                .filter(|e| m.params.get(&e.name) != c.params.get(&e.name))
                .map(|e| e.name.as_str())
                .collect();
            if head_only {
                assert_eq!(moved, ["fc.weight", "fc.bias"]);
            } else {
                assert!(moved.len() > 10 && moved.contains(&"conv1.weight"), "{moved:?}");
            }
        }
    }

    #[test]
    fn pixel_formats_agree() {
        let rgba: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        let rgb: Vec<u8> = rgba.chunks(4).flat_map(|p| p[..3].to_vec()).collect();
        let a = dataset_from_pixels(&rgba, &[0], 3, 2, vec![], "rgba").unwrap();
        let b = dataset_from_pixels(&rgb, &[0], 3, 2, vec![], "rgb").unwrap();
        let c = dataset_from_pixels(&a.images, &[0], 3, 2, vec![], "chw").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.image(0)[..6], [0, 4, 8, 12, 16, 20]);
        let e = dataset_from_pixels(&rgba[1..], &[0], 3, 2, vec![], "rgba").unwrap_err();
        assert!(e.to_string().contains("need 24 bytes, found 23"), "{e}");
        assert!(dataset_from_pixels(&rgba, &[0], 3, 2, vec![], "bgr").is_err());
    }

    #[test]
    fn training_moves_the_model_and_keeps_it_usable() {
        let data = toy(16);
        let mut c = create("resnet8", 2, 3).unwrap();
        set_normalization(&mut c, &data, "per-channel").unwrap();
        let before = c.to_safetensors().unwrap();
        let mut s = TrainSession::new(&TrainOptions {
            lr: 0.05,
            batch: 8,
            steps: 10,
            ..Default::default()
        })
        .unwrap();
        let mut losses = Vec::new();
        for i in 0..10 {
            let st = s.step(&mut c, &data).unwrap();
            assert_eq!(st.iteration, i);
            losses.push(st.loss);
        }
        assert!(losses[9] < losses[0], "{losses:?}");
        // the model lives in the classifier between steps: it is saved with its new weights
        let after = c.to_safetensors().unwrap();
        assert_ne!(before, after);
        let back = Classifier::load(&after, &LoadOptions::default()).unwrap();
        assert_eq!(back.params.param_count(), c.params.param_count());
        assert!(back.params.grads().is_empty(), "a loaded model holds no gradients");
        let ev = evaluate(&mut c, &data, Some(5), 4).unwrap();
        assert_eq!(ev["total"], 5);
    }

    #[test]
    fn data_parallel_halves_match_one_step_on_the_whole_batch_for_plain_sgd() {
        // gradients averaged over two equal halves equal those of the whole batch
        let data = toy(8);
        let opts = TrainOptions {
            lr: 0.1,
            momentum: 0.0,
            weight_decay: 0.0,
            batch: 8,
            schedule: "constant".into(),
            augment: false,
            ..Default::default()
        };
        let mut whole = create("resnet8", 2, 1).unwrap();
        let mut s = TrainSession::new(&opts).unwrap();
        s.compute_gradients(&mut whole, &data).unwrap();
        let g = whole.params.grads().to_vec();
        // two workers, each with the whole data set and its half of every batch
        let mut avg = vec![0f32; g.len()];
        for offset in [0, 4] {
            let mut w = create("resnet8", 2, 1).unwrap();
            let mut ws = TrainSession::new(&TrainOptions {
                batch: 4,
                global_batch: 8,
                batch_offset: offset,
                ..opts.clone()
            })
            .unwrap();
            ws.compute_gradients(&mut w, &data).unwrap();
            for (a, v) in avg.iter_mut().zip(w.params.grads().to_vec()) {
                *a += v / 2.0;
            }
        }
        let max = resnet_core::tensor::max_abs_diff(&g, &avg);
        let scale = resnet_core::tensor::max_abs(g.iter().copied());
        // BN batch statistics differ between a batch of 8 and two of 4, so only roughly
        assert!(max < 0.5 * scale + 1e-6, "max diff {max}, scale {scale}");
        let mut w = create("resnet8", 2, 1).unwrap();
        w.params.set_grads(&avg).unwrap();
        assert!(w.params.set_grads(&avg[1..]).is_err());
        let mut ws = TrainSession::new(&opts).unwrap();
        assert_eq!(ws.apply_gradients(&mut w).unwrap(), 0.1);
        assert_eq!(ws.iteration(), 1);
    }

    #[test]
    fn workers_of_a_split_batch_see_exactly_the_whole_batch() {
        let data = toy(20);
        let c = create("resnet8", 2, 1).unwrap();
        let opts = TrainOptions {
            batch: 8,
            seed: 5,
            ..Default::default()
        };
        let fill = |s: &mut TrainSession, it: u64| {
            s.trainer.iteration = it;
            let n = s.fill(&c.normalization, &data).unwrap();
            (s.input.as_ref().unwrap().data().to_vec(), s.labels[..n].to_vec())
        };
        let mut whole = TrainSession::new(&opts).unwrap();
        let mut parts: Vec<TrainSession> = [(0, 3), (3, 5)]
            .iter()
            .map(|&(offset, batch)| {
                TrainSession::new(&TrainOptions {
                    batch,
                    global_batch: 8,
                    batch_offset: offset,
                    ..opts.clone()
                })
                .unwrap()
            })
            .collect();
        // iterations 0, 1 (epoch 0) and 2 (epoch 1: 20 images make 2 whole batches of 8)
        for (it, whole_it) in [(0, 0), (1, 1), (2, 3)] {
            let (want_x, want_l) = fill(&mut whole, whole_it);
            let (mut x, mut l) = fill(&mut parts[0], it);
            let (x1, l1) = fill(&mut parts[1], it);
            x.extend(x1);
            l.extend(l1);
            assert_eq!((x, l), (want_x, want_l), "iteration {it}");
        }
        let too_big = TrainOptions {
            batch: 5,
            global_batch: 8,
            batch_offset: 4,
            ..opts.clone()
        };
        assert!(TrainSession::new(&too_big).is_err());
    }

    #[test]
    fn bad_options_are_refused_with_a_message() {
        let e = TrainSession::new(&TrainOptions {
            schedule: "linear".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("\"linear\""), "{e}");
        assert!(create("resnet9", 10, 0).is_err());
        assert!(whole_number(1.5, "seed").is_err());
        assert_eq!(whole_number(7.0, "seed").unwrap(), 7);
    }
}
