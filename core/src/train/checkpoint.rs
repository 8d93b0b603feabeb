//! Training checkpoints: a classifier file plus the optimizer's momentum buffers
//! (`optimizer.momentum.<param>`) and the trainer's state (`trainer` metadata: iteration,
//! SGD hyper-parameters, schedule), so that a resumed run continues bit for bit.

use super::schedule::Schedule;
use super::sgd::Sgd;
use super::trainer::Trainer;
use crate::classifier::{Classifier, LoadOptions, OPTIMIZER_PREFIX};
use crate::io::safetensors::write_safetensors;
use crate::io::{read_weights, NamedTensor};
use crate::layers::Slot;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Metadata key of the trainer state.
pub const TRAINER_KEY: &str = "trainer";

#[derive(Serialize, Deserialize)]
struct TrainerState {
    iteration: u64,
    momentum: f32,
    weight_decay: f32,
    nesterov: bool,
    schedule: Schedule,
}

fn param_names(trainer: &mut Trainer) -> Vec<String> {
    let mut names = Vec::new();
    trainer.model.visit(&mut |name, slot| {
        if let Slot::Param(_) = slot {
            names.push(name.to_string());
        }
    });
    names
}

/// A training run's state: the trainer (model, optimizer, schedule, iteration) and what
/// makes the model a classifier (classes, preprocessing, metadata).
pub struct TrainingState {
    pub trainer: Trainer,
    /// Class names, normalisation and metadata; its `net` is unused (the trainer's model
    /// is the live one) and is replaced on save.
    pub classes: Vec<String>,
    pub normalization: crate::data::augment::Normalization,
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl TrainingState {
    /// Serialises everything as safetensors.
    pub fn to_bytes(&mut self) -> Result<Vec<u8>> {
        let classifier = self.classifier_view();
        let (mut tensors, mut meta) = classifier.tensors_and_metadata()?;
        let names = param_names(&mut self.trainer);
        if !self.trainer.sgd.velocity.is_empty() {
            let mut shapes = Vec::new();
            self.trainer.model.for_each_param(&mut |p| shapes.push(p.shape.clone()));
            for ((name, v), shape) in names.iter().zip(&self.trainer.sgd.velocity).zip(shapes) {
                if !v.is_empty() {
                    tensors.push(NamedTensor::new(
                        format!("{OPTIMIZER_PREFIX}momentum.{name}"),
                        shape,
                        v.clone(),
                    ));
                }
            }
        }
        let state = TrainerState {
            iteration: self.trainer.iteration,
            momentum: self.trainer.sgd.momentum,
            weight_decay: self.trainer.sgd.weight_decay,
            nesterov: self.trainer.sgd.nesterov,
            schedule: self.trainer.schedule.clone(),
        };
        meta.insert(
            TRAINER_KEY.into(),
            serde_json::to_string(&state).map_err(|e| Error::Load(e.to_string()))?,
        );
        let refs = tensors.iter().map(|t| (t.name.as_str(), &t.shape[..], &t.data[..]));
        Ok(write_safetensors(refs, &meta)?)
    }

    /// A classifier holding a copy of the live model (for evaluation or `best` files).
    pub fn classifier_view(&self) -> Classifier {
        let mut model = self.trainer.model.clone();
        let mut params = crate::Params::new(model.config.clone(), 0).expect("the trainer's own architecture");
        model.copy_into_params(&mut params);
        Classifier::new(
            params,
            self.classes.clone(),
            self.normalization.clone(),
            self.metadata.clone(),
        )
    }

    /// Reads a checkpoint written by [`TrainingState::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut file = read_weights(bytes)?;
        let state_json = file
            .metadata
            .remove(TRAINER_KEY)
            .ok_or_else(|| Error::Load(format!("not a training checkpoint: no \"{TRAINER_KEY}\" metadata")))?;
        let state: TrainerState =
            serde_json::from_str(&state_json).map_err(|e| Error::Load(format!("metadata \"{TRAINER_KEY}\": {e}")))?;
        let momentum: std::collections::BTreeMap<String, NamedTensor> = file
            .tensors
            .iter()
            .filter_map(|t| {
                let name = t.name.strip_prefix(OPTIMIZER_PREFIX)?.strip_prefix("momentum.")?;
                Some((name.to_string(), t.clone()))
            })
            .collect();
        let classifier = Classifier::from_tensor_file(file, &LoadOptions::default())?;
        let mut sgd = Sgd::new(state.momentum, state.weight_decay);
        sgd.nesterov = state.nesterov;
        let mut trainer = Trainer::new(
            crate::model::ResNet::from_params(&classifier.params)?,
            sgd,
            state.schedule,
        );
        trainer.iteration = state.iteration;
        if !momentum.is_empty() {
            let names = param_names(&mut trainer);
            let mut velocity = Vec::new();
            let mut shapes = Vec::new();
            trainer.model.for_each_param(&mut |p| shapes.push(p.shape.clone()));
            for (name, shape) in names.iter().zip(shapes) {
                let t = momentum
                    .get(name)
                    .ok_or_else(|| Error::Load(format!("checkpoint has no momentum for {name}")))?;
                if t.shape != shape {
                    return Err(Error::Load(format!(
                        "{OPTIMIZER_PREFIX}momentum.{name}: expected {shape:?}, found {:?}",
                        t.shape
                    )));
                }
                velocity.push(t.data.clone());
            }
            trainer.sgd.velocity = velocity;
        }
        Ok(TrainingState {
            trainer,
            classes: classifier.classes,
            normalization: classifier.normalization,
            metadata: classifier.metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::default_classes;
    use crate::data::augment::Normalization;
    use crate::model::{ResNet, ResNetConfig};
    use crate::rng::Rng;
    use crate::Tensor;

    fn step(state: &mut TrainingState, rng: &mut Rng) {
        let x = Tensor::new(vec![4, 3, 8, 8], (0..4 * 192).map(|_| rng.normal() as f32).collect()).unwrap();
        state.trainer.step(&x, &[0, 1, 2, 3]).unwrap();
    }

    #[test]
    fn resumed_training_is_bit_identical() {
        let new_state = || TrainingState {
            trainer: Trainer::new(
                ResNet::new(ResNetConfig::named("resnet8").unwrap(), 3).unwrap(),
                Sgd::new(0.9, 1e-4),
                Schedule::paper(0.1, 6),
            ),
            classes: default_classes(10),
            normalization: Normalization::PerChannel {
                mean: [0.5; 3],
                std: [0.25; 3],
            },
            metadata: Default::default(),
        };
        let mut straight = new_state();
        let mut rng = Rng::new(1);
        for _ in 0..4 {
            step(&mut straight, &mut rng);
        }

        let mut first = new_state();
        let mut rng = Rng::new(1);
        for _ in 0..2 {
            step(&mut first, &mut rng);
        }
        let bytes = first.to_bytes().unwrap();
        let mut resumed = TrainingState::from_bytes(&bytes).unwrap();
        assert_eq!(resumed.trainer.iteration, 2);
        for _ in 0..2 {
            step(&mut resumed, &mut rng);
        }
        let a = straight.to_bytes().unwrap();
        let b = resumed.to_bytes().unwrap();
        assert!(a == b, "resumed run differs from the straight one");
        // A checkpoint also loads as a plain classifier.
        assert!(Classifier::load(&a, &LoadOptions::default()).is_ok());
        assert!(TrainingState::from_bytes(&straight.classifier_view().to_safetensors().unwrap()).is_err());
    }
}
