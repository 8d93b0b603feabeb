//! A network together with what it takes to use it on images: class names and
//! preprocessing. Loads our self-describing safetensors and other implementations'
//! checkpoints, classifies images, evaluates data sets, and saves.
//!
//! Metadata keys of our safetensors files: `format` (`resnet/1`), `config` (the
//! [`ResNetConfig`] as JSON), `classes` (JSON array of names), `normalization` (JSON:
//! `{"kind":"per_channel","mean":[..],"std":[..]}` or `{"kind":"per_pixel_mean"}` with the
//! mean image stored as the tensor [`MEAN_IMAGE`]), and whatever else the writer adds
//! (e.g. `training`).

use crate::data::augment::Normalization;
use crate::data::cifar::DEFAULT_CLASSES;
use crate::data::image::{resize_bilinear_antialias, resize_shorter_side_and_crop, to_chw_u8, RgbImage};
use crate::data::image::{IMAGENET_MEAN, IMAGENET_STD};
use crate::data::Dataset;
use crate::io::safetensors::write_safetensors;
use crate::io::{read_weights, NamedTensor, TensorFile};
use crate::layers::loss::softmax;
use crate::model::weights::{canonicalize_names, infer_config, MEAN_IMAGE};
use crate::model::{ResNetConfig, ShortcutOption, Stem};
use crate::plan::{ExecutionPlan, PlanOptions};
use crate::{Error, Params, Result};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// The 1000 ImageNet (ILSVRC-2012) class names in label order: the first WordNet lemma
/// of each synset.
pub const IMAGENET_CLASSES: &str = include_str!("data/imagenet_classes.txt");

/// The value of the `format` metadata key in files we write.
pub const FORMAT_TAG: &str = "resnet/1";

/// Metadata keys this type reads and writes itself.
const OWN_KEYS: [&str; 4] = ["format", "config", "classes", "normalization"];

/// Prefix of the tensors that hold optimizer state in training checkpoints.
pub const OPTIMIZER_PREFIX: &str = "optimizer.";

/// Overrides for loading weights whose file does not say everything.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// A zoo name (`resnet20`, `plain20`, ...) instead of the file's or inferred architecture.
    pub model: Option<String>,
    /// A shortcut option instead of the file's or inferred one.
    pub shortcut: Option<ShortcutOption>,
    /// Per-channel mean and std (in [0, 1] units) instead of the file's preprocessing.
    pub mean_std: Option<([f32; 3], [f32; 3])>,
}

/// One entry of a top-k answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub index: usize,
    pub label: String,
    pub probability: f32,
}

/// Accuracy figures of a data set.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub total: usize,
    pub top1: usize,
    pub top5: usize,
    /// Mean cross-entropy.
    pub loss: f64,
    /// `confusion[label][predicted]`.
    pub confusion: Vec<Vec<u32>>,
}

impl Evaluation {
    /// Per-class top-1 accuracy.
    pub fn per_class(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(i, row)| row[i] as f64 / row.iter().sum::<u32>().max(1) as f64)
            .collect()
    }
}

/// A network's parameters, its class names, its preprocessing and free-form metadata,
/// with the inference plan that runs it (built on first use for the batch and input
/// size asked for, and kept while they fit).
#[derive(Debug)]
pub struct Classifier {
    pub params: Params,
    pub classes: Vec<String>,
    pub normalization: Normalization,
    /// Metadata kept from the file or added by training (everything but the keys this
    /// type writes itself).
    pub metadata: BTreeMap<String, String>,
    plan: Option<ExecutionPlan>,
    plan_options: PlanOptions,
}

impl Clone for Classifier {
    /// Copies the parameters and descriptions; the copy builds its own plan when used.
    fn clone(&self) -> Self {
        Classifier::new(
            self.params.clone(),
            self.classes.clone(),
            self.normalization.clone(),
            self.metadata.clone(),
        )
    }
}

/// Default class names for a classifier with `n` outputs.
pub fn default_classes(n: usize) -> Vec<String> {
    match n {
        10 => DEFAULT_CLASSES.iter().map(|s| s.to_string()).collect(),
        1000 => IMAGENET_CLASSES.lines().map(str::to_string).collect(),
        _ => (0..n).map(|i| format!("class {i}")).collect(),
    }
}

fn json_err(key: &str, e: impl std::fmt::Display) -> Error {
    Error::Load(format!("metadata \"{key}\" is not valid: {e}"))
}

impl Classifier {
    /// A classifier of `params` with these classes, preprocessing and metadata.
    pub fn new(
        params: Params,
        classes: Vec<String>,
        normalization: Normalization,
        metadata: BTreeMap<String, String>,
    ) -> Self {
        Classifier {
            params,
            classes,
            normalization,
            metadata,
            plan: None,
            plan_options: PlanOptions::default(),
        }
    }

    /// The architecture.
    pub fn config(&self) -> &ResNetConfig {
        self.params.config()
    }

    /// How inference plans are built from now on (e.g. a forced convolution algorithm).
    pub fn set_plan_options(&mut self, options: PlanOptions) {
        self.plan_options = options;
        self.plan = None;
    }

    /// The inference plan in use, if one has been built.
    pub fn plan(&self) -> Option<&ExecutionPlan> {
        self.plan.as_ref()
    }

    /// Logits (`n x classes`, row-major) of `n` preprocessed NCHW images of `height x
    /// width`: the network alone, as an ONNX session runs it.
    pub fn logits(&mut self, inputs: &[f32], n: usize, height: usize, width: usize) -> Result<&[f32]> {
        let fits = self
            .plan
            .as_ref()
            .is_some_and(|p| p.batch() >= n && p.input_size() == (height, width));
        if !fits {
            self.plan = None;
            let plan = ExecutionPlan::inference(self.params.config(), n, height, width, self.plan_options)?;
            self.plan = Some(plan);
        }
        let plan = self.plan.as_mut().expect("built above");
        plan.forward(&self.params, inputs, n)
    }

    /// Loads our safetensors or a PyTorch checkpoint (zip or legacy). The architecture
    /// comes from `opts.model`, else the file's metadata, else the tensor names and shapes;
    /// imported files without preprocessing get torchvision's ImageNet mean and std.
    pub fn load(bytes: &[u8], opts: &LoadOptions) -> Result<Self> {
        Classifier::from_tensor_file(read_weights(bytes)?, opts)
    }

    /// [`Classifier::load`] from bytes it may free: they go once parsed, before the
    /// weights take their own copy, so that a file's bytes, its parsed tensors and the
    /// weights are never all held at once.
    pub fn load_owned(bytes: Vec<u8>, opts: &LoadOptions) -> Result<Self> {
        let file = read_weights(&bytes)?;
        drop(bytes);
        Classifier::from_tensor_file(file, opts)
    }

    /// [`Classifier::load`] on a file already parsed. Tensors under `optimizer.` (training
    /// checkpoints) are not weights and are left alone.
    pub fn from_tensor_file(mut file: TensorFile, opts: &LoadOptions) -> Result<Self> {
        canonicalize_names(&mut file);
        let meta = std::mem::take(&mut file.metadata);
        let mut config = if let Some(name) = &opts.model {
            let inferred = infer_config(&file).ok();
            let mut c = ResNetConfig::named(name)?;
            if let Some(i) = inferred {
                c = c.with_classes(i.num_classes).with_shortcut(i.shortcut);
            }
            c
        } else if let Some(json) = meta.get("config") {
            let config = serde_json::from_str(json).map_err(|e| json_err("config", e))?;
            // The one size source not derived from the tensors themselves or the zoo.
            check_sizes(&config, &file)?;
            config
        } else {
            infer_config(&file)?
        };
        if let Some(s) = opts.shortcut {
            config = config.with_shortcut(s);
        }
        // Every tensor is loaded (a missing one is an error), so nothing random is drawn.
        let mut params = Params::zeroed(config)?;
        params.load_tensors(&file, &|name| name == MEAN_IMAGE || name.starts_with(OPTIMIZER_PREFIX))?;
        let n = params.config().num_classes;
        let classes = match meta.get("classes") {
            Some(json) => {
                let c: Vec<String> = serde_json::from_str(json).map_err(|e| json_err("classes", e))?;
                if c.len() != n {
                    return Err(Error::Load(format!(
                        "metadata lists {} class names for {n} outputs",
                        c.len()
                    )));
                }
                c
            }
            None => default_classes(n),
        };
        let normalization = match (&opts.mean_std, meta.get("normalization")) {
            (Some((mean, std)), _) => Normalization::PerChannel { mean: *mean, std: *std },
            (None, Some(json)) => parse_normalization(json, &file, params.config().in_channels)?,
            (None, None) => Normalization::PerChannel {
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            },
        };
        normalization
            .check_values()
            .map_err(|e| Error::Load(format!("preprocessing: {e}")))?;
        let metadata = meta
            .into_iter()
            .filter(|(k, _)| !OWN_KEYS.contains(&k.as_str()))
            .collect();
        Ok(Classifier::new(params, classes, normalization, metadata))
    }

    /// Our self-describing safetensors: weights, running statistics, the mean image when
    /// there is one, and the metadata described in the module documentation.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let (tensors, meta) = self.tensors_and_metadata()?;
        let refs = tensors.iter().map(|t| (t.name.as_str(), &t.shape[..], &t.data[..]));
        Ok(write_safetensors(refs, &meta)?)
    }

    /// What [`Classifier::to_safetensors`] writes, for writers that add tensors of their own.
    /// Refuses what no reader would accept: an architecture beyond the documented limits
    /// or preprocessing with non-finite values or a std of 0.
    pub fn tensors_and_metadata(&self) -> Result<(Vec<NamedTensor>, BTreeMap<String, String>)> {
        self.params.config().validate()?;
        self.normalization
            .check_values()
            .map_err(|e| Error::Config(format!("cannot write preprocessing: {e}")))?;
        let mut tensors = self.params.to_named_tensors();
        let norm = match &self.normalization {
            Normalization::PerChannel { mean, std } => {
                serde_json::json!({"kind": "per_channel", "mean": mean, "std": std})
            }
            Normalization::PerPixelMean { mean } => {
                let side = ((mean.len() / 3) as f64).sqrt() as usize;
                let (h, w) = if side * side * 3 == mean.len() {
                    (side, side)
                } else {
                    (1, mean.len() / 3)
                };
                tensors.push(NamedTensor::new(MEAN_IMAGE, vec![3, h, w], mean.clone()));
                serde_json::json!({"kind": "per_pixel_mean"})
            }
        };
        let mut meta = self.metadata.clone();
        meta.insert("format".into(), FORMAT_TAG.into());
        meta.insert(
            "config".into(),
            serde_json::to_string(self.params.config()).map_err(|e| json_err("config", e))?,
        );
        meta.insert(
            "classes".into(),
            serde_json::to_string(&self.classes).map_err(|e| json_err("classes", e))?,
        );
        meta.insert("normalization".into(), norm.to_string());
        Ok((tensors, meta))
    }

    /// Side of the square input the network takes.
    pub fn input_size(&self) -> usize {
        match &self.normalization {
            Normalization::PerPixelMean { mean } => ((mean.len() / 3) as f64).sqrt() as usize,
            Normalization::PerChannel { .. } => self.params.config().input_size,
        }
    }

    /// Network input for one image of any size: ImageNet models resize the shorter side
    /// to 256/224 of the input and centre-crop (torchvision's evaluation transform), CIFAR
    /// models resize to the input size; then the model's normalisation.
    pub fn preprocess(&self, img: &RgbImage) -> Result<Vec<f32>> {
        let square = self.fit_image(img.clone());
        Ok(self.normalization.apply(&to_chw_u8(&square))?)
    }

    /// The geometric part of [`Classifier::preprocess`]: the square input-size image.
    pub fn fit_image(&self, img: RgbImage) -> RgbImage {
        let size = self.input_size();
        match self.params.config().stem {
            Stem::ImageNet => resize_shorter_side_and_crop(&img, size * 256 / 224, size, size),
            Stem::Cifar if img.width == size && img.height == size => img,
            Stem::Cifar => resize_bilinear_antialias(&img, size, size),
        }
    }

    /// Class probabilities (softmax of the logits) for `n` preprocessed images.
    pub fn probabilities(&mut self, inputs: Vec<f32>, n: usize) -> Result<Vec<Vec<f32>>> {
        let size = self.input_size();
        let classes = self.params.config().num_classes;
        let logits = self.logits(&inputs, n, size, size)?;
        Ok(logits.chunks(classes).map(softmax).collect())
    }

    /// The `top_k` most probable classes of each image.
    pub fn classify(&mut self, images: &[RgbImage], top_k: usize) -> Result<Vec<Vec<Prediction>>> {
        let mut inputs = Vec::new();
        for img in images {
            inputs.extend(self.preprocess(img)?);
        }
        let probs = self.probabilities(inputs, images.len())?;
        Ok(probs.iter().map(|p| self.top_k(p, top_k)).collect())
    }

    /// The `k` largest probabilities with their labels, most probable first.
    pub fn top_k(&self, probs: &[f32], k: usize) -> Vec<Prediction> {
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        order
            .into_iter()
            .take(k)
            .map(|i| Prediction {
                index: i,
                label: self.classes.get(i).cloned().unwrap_or_else(|| format!("class {i}")),
                probability: probs[i],
            })
            .collect()
    }

    /// Top-1 and top-5 accuracy, loss and confusion matrix over `data` in batches of
    /// `batch`, calling `progress(done, total)` after each batch.
    pub fn evaluate(
        &mut self,
        data: &Dataset,
        batch: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Evaluation> {
        let n_classes = self.params.config().num_classes;
        if data.classes.len() > n_classes {
            return Err(Error::Config(format!(
                "the data set has {} classes, the model only {n_classes}",
                data.classes.len()
            )));
        }
        let size = self.input_size();
        let per_image = 3 * size * size;
        let direct = data.height == size && data.width == size;
        let mut eval = Evaluation {
            total: 0,
            top1: 0,
            top5: 0,
            loss: 0.0,
            confusion: vec![vec![0; n_classes]; n_classes],
        };
        let batch = batch.max(1);
        let mut inputs = vec![0f32; batch * per_image];
        for start in (0..data.len()).step_by(batch) {
            let n = batch.min(data.len() - start);
            let buf = &mut inputs[..n * per_image];
            buf.par_chunks_mut(per_image)
                .enumerate()
                .try_for_each(|(i, out)| -> Result<()> {
                    let img = data.image(start + i);
                    if direct {
                        self.normalization.apply_into(img, out)?;
                    } else {
                        out.copy_from_slice(&self.preprocess(&chw_to_image(img, data.width, data.height))?);
                    }
                    Ok(())
                })?;
            let probs = self.probabilities(buf.to_vec(), n)?;
            for (i, p) in probs.iter().enumerate() {
                let label = data.labels[start + i] as usize;
                let ranked = self.top_k(p, 5);
                eval.top1 += (ranked[0].index == label) as usize;
                eval.top5 += ranked.iter().any(|r| r.index == label) as usize;
                eval.confusion[label][ranked[0].index] += 1;
                eval.loss -= (p[label].max(1e-30) as f64).ln();
            }
            eval.total += n;
            progress(eval.total, data.len());
        }
        eval.loss /= eval.total.max(1) as f64;
        Ok(eval)
    }
}

/// Compares the number of values the architecture `config` declares (checked against
/// the documented limits first, see [`ResNetConfig::validate`]) with the number the file
/// holds, before anything of that size is allocated: every one of them must be in it.
fn check_sizes(config: &ResNetConfig, file: &TensorFile) -> Result<()> {
    config.validate()?;
    let entries = Params::layout_of(config)?;
    let declared = entries
        .iter()
        .try_fold(0usize, |acc, e| acc.checked_add(e.len))
        .ok_or_else(|| Error::Load(format!("model {}: its size overflows", config.name)))?;
    let held = file.total_elements();
    if declared > held {
        return Err(Error::Load(format!(
            "model {} ({:?} blocks of widths {:?}, {} classes) needs {declared} values, the file holds {held}",
            config.name, config.stage_blocks, config.stage_widths, config.num_classes
        )));
    }
    Ok(())
}

/// A CHW u8 image as an HWC [`RgbImage`].
fn chw_to_image(chw: &[u8], width: usize, height: usize) -> RgbImage {
    let plane = width * height;
    let mut data = vec![0u8; 3 * plane];
    for p in 0..plane {
        for c in 0..3 {
            data[p * 3 + c] = chw[c * plane + p];
        }
    }
    RgbImage { width, height, data }
}

fn parse_normalization(json: &str, file: &TensorFile, channels: usize) -> Result<Normalization> {
    #[derive(serde::Deserialize)]
    struct Norm {
        kind: String,
        mean: Option<[f32; 3]>,
        std: Option<[f32; 3]>,
    }
    let n: Norm = serde_json::from_str(json).map_err(|e| json_err("normalization", e))?;
    match (n.kind.as_str(), n.mean, n.std) {
        ("per_channel", Some(mean), Some(std)) => Ok(Normalization::PerChannel { mean, std }),
        ("per_pixel_mean", _, _) => {
            let t = file.get(MEAN_IMAGE).ok_or_else(|| {
                Error::Load(format!(
                    "normalization is per_pixel_mean but the file has no {MEAN_IMAGE}"
                ))
            })?;
            if t.shape.len() != 3 || t.shape[0] != channels {
                return Err(Error::Load(format!(
                    "{MEAN_IMAGE}: expected [{channels}, H, W], found {:?}",
                    t.shape
                )));
            }
            Ok(Normalization::PerPixelMean { mean: t.data.clone() })
        }
        (kind, _, _) => Err(Error::Load(format!(
            "metadata \"normalization\": unknown kind \"{kind}\" or missing mean/std"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_round_trip_keeps_weights_classes_and_preprocessing() {
        let mut params = Params::new(ResNetConfig::named("resnet8").unwrap().with_classes(3), 5).unwrap();
        params.get_mut("layer1.0.bn1.running_mean").unwrap()[2] = 0.25;
        let mean: Vec<f32> = (0..3 * 32 * 32).map(|i| (i % 7) as f32 / 10.0).collect();
        let c = Classifier::new(
            params,
            vec!["a".into(), "b".into(), "c".into()],
            Normalization::PerPixelMean { mean: mean.clone() },
            BTreeMap::from([("training".to_string(), "{\"epochs\":1}".to_string())]),
        );
        let bytes = c.to_safetensors().unwrap();
        let back = Classifier::load(&bytes, &LoadOptions::default()).unwrap();
        assert_eq!(back.classes, c.classes);
        assert_eq!(back.normalization, Normalization::PerPixelMean { mean });
        assert_eq!(back.metadata.get("training").unwrap(), "{\"epochs\":1}");
        assert_eq!(back.config(), c.config());
        assert_eq!(back.params.to_named_tensors(), c.params.to_named_tensors());
        assert_eq!(back.input_size(), 32);
    }

    /// A resnet8 file whose metadata `key` is replaced by `value`.
    fn with_metadata(key: &str, value: &str) -> Vec<u8> {
        let c = Classifier::new(
            Params::new(ResNetConfig::named("resnet8").unwrap(), 1).unwrap(),
            default_classes(10),
            Normalization::PerChannel {
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            },
            BTreeMap::new(),
        );
        let mut file = read_weights(&c.to_safetensors().unwrap()).unwrap();
        file.metadata.insert(key.into(), value.into());
        let refs = file
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), &t.shape[..], &t.data[..]));
        write_safetensors(refs, &file.metadata).unwrap()
    }

    #[test]
    fn sizes_in_the_metadata_are_checked_before_allocating() {
        let config = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut v = serde_json::to_value(ResNetConfig::named("resnet8").unwrap()).unwrap();
            change(&mut v);
            with_metadata("config", &v.to_string())
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                config(&|v| v["stage_blocks"] = serde_json::json!([1_000_000_000u64, 3, 3])),
                "blocks per stage must be between 1 and 1024",
            ),
            (
                config(&|v| v["stage_widths"] = serde_json::json!([16, 32, 1u64 << 20])),
                "a stage width must be between 1 and 16384",
            ),
            (
                config(&|v| v["stage_widths"] = serde_json::json!([16, 32, 8192])),
                "the file holds 75770",
            ),
            (
                config(&|v| v["num_classes"] = serde_json::json!(1u64 << 40)),
                "classes must be between 1 and 1048576",
            ),
            (config(&|v| v["num_classes"] = serde_json::json!(100_000)), "needs 6"),
            (
                config(&|v| v["input_size"] = serde_json::json!(1u64 << 31)),
                "the input size must be between 1 and 4096",
            ),
            (
                with_metadata(
                    "normalization",
                    r#"{"kind":"per_channel","mean":[0.5,0.5,0.5],"std":[0.2,0.0,0.2]}"#,
                ),
                "standard deviations must be positive and finite",
            ),
        ];
        for (bytes, want) in cases {
            let err = Classifier::load(&bytes, &LoadOptions::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "expected \"{want}\" in: {err}");
        }
        // A std of 0 from the command line is refused too, and never written.
        let opts = LoadOptions {
            mean_std: Some(([0.5; 3], [0.0; 3])),
            ..Default::default()
        };
        assert!(Classifier::load(&with_metadata("x", "y"), &opts).is_err());
        let mut c = Classifier::load(&with_metadata("x", "y"), &LoadOptions::default()).unwrap();
        c.normalization = Normalization::PerChannel {
            mean: [0.5; 3],
            std: [1.0, 0.0, 1.0],
        };
        let err = c.to_safetensors().unwrap_err().to_string();
        assert!(err.contains("cannot write preprocessing"), "{err}");
    }

    #[test]
    fn classify_sorts_probabilities_and_names_classes() {
        let params = Params::new(ResNetConfig::named("resnet8").unwrap(), 5).unwrap();
        let mut c = Classifier::new(
            params,
            default_classes(10),
            Normalization::PerChannel {
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            },
            BTreeMap::new(),
        );
        let img = RgbImage::new(50, 37, (0..50 * 37 * 3).map(|i| (i * 7 % 256) as u8).collect()).unwrap();
        let out = c.classify(&[img.clone(), img], 5).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], out[1]);
        assert!(out[0].windows(2).all(|w| w[0].probability >= w[1].probability));
        assert_eq!(out[0][0].label, DEFAULT_CLASSES[out[0][0].index]);
        assert_eq!(default_classes(1000)[0], "tench");
        assert_eq!(default_classes(1000).len(), 1000);
    }
}
