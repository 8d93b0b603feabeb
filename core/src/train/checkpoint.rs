//! Training checkpoints: a classifier file plus the optimizer's momentum buffers
//! (`optimizer.momentum.<param>`) and the trainer's state (`trainer` metadata: iteration,
//! SGD hyper-parameters, schedule), so that a resumed run continues bit for bit.

use super::schedule::Schedule;
use super::sgd::Sgd;
use super::trainer::Trainer;
use crate::classifier::{Classifier, LoadOptions, OPTIMIZER_PREFIX};
use crate::io::safetensors::write_safetensors;
use crate::io::{read_weights, NamedTensor};
use crate::params::Kind;
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

/// A training run's state: the classifier being trained (its parameters, classes,
/// preprocessing and metadata) and the trainer (optimizer, schedule, iteration).
#[derive(Debug)]
pub struct TrainingState {
    pub classifier: Classifier,
    pub trainer: Trainer,
}

impl TrainingState {
    /// One SGD step of the classifier's parameters (see [`Trainer::step`]).
    pub fn step(&mut self, images: &crate::Tensor, labels: &[u32]) -> Result<super::StepStats> {
        self.trainer.step(&mut self.classifier.params, images, labels)
    }

    /// Serialises everything as safetensors: the classifier's tensors and metadata, the
    /// momentum of every parameter (`optimizer.momentum.<name>`) and the trainer state.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let (mut tensors, mut meta) = self.classifier.tensors_and_metadata()?;
        let velocity = &self.trainer.sgd.velocity;
        if !velocity.is_empty() {
            for e in self
                .classifier
                .params
                .entries()
                .iter()
                .filter(|e| e.kind == Kind::Param)
            {
                tensors.push(NamedTensor::new(
                    format!("{OPTIMIZER_PREFIX}momentum.{}", e.name),
                    e.shape.clone(),
                    velocity[e.offset..e.offset + e.len].to_vec(),
                ));
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
        if !momentum.is_empty() {
            let params = &classifier.params;
            let mut velocity = vec![0.0; params.param_count()];
            for e in params.entries().iter().filter(|e| e.kind == Kind::Param) {
                let t = momentum
                    .get(&e.name)
                    .ok_or_else(|| Error::Load(format!("checkpoint has no momentum for {}", e.name)))?;
                if t.shape != e.shape {
                    return Err(Error::Load(format!(
                        "{OPTIMIZER_PREFIX}momentum.{}: expected {:?}, found {:?}",
                        e.name, e.shape, t.shape
                    )));
                }
                velocity[e.offset..e.offset + e.len].copy_from_slice(&t.data);
            }
            sgd.velocity = velocity;
        }
        let mut trainer = Trainer::new(sgd, state.schedule);
        trainer.iteration = state.iteration;
        Ok(TrainingState { classifier, trainer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::default_classes;
    use crate::data::augment::Normalization;
    use crate::model::ResNetConfig;
    use crate::rng::Rng;
    use crate::{Params, Tensor};

    fn step(state: &mut TrainingState, rng: &mut Rng) {
        let x = Tensor::new(vec![4, 3, 8, 8], (0..4 * 192).map(|_| rng.normal() as f32).collect()).unwrap();
        state.step(&x, &[0, 1, 2, 3]).unwrap();
    }

    #[test]
    fn resumed_training_is_bit_identical() {
        let new_state = || TrainingState {
            classifier: Classifier::new(
                Params::new(ResNetConfig::named("resnet8").unwrap(), 3).unwrap(),
                default_classes(10),
                Normalization::PerChannel {
                    mean: [0.5; 3],
                    std: [0.25; 3],
                },
                Default::default(),
            ),
            trainer: Trainer::new(Sgd::new(0.9, 1e-4), Schedule::paper(0.1, 6)),
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
        assert_eq!(resumed.trainer.sgd.velocity, first.trainer.sgd.velocity);
        for _ in 0..2 {
            step(&mut resumed, &mut rng);
        }
        let a = straight.to_bytes().unwrap();
        let b = resumed.to_bytes().unwrap();
        assert!(a == b, "resumed run differs from the straight one");
        // A checkpoint also loads as a plain classifier.
        assert!(Classifier::load(&a, &LoadOptions::default()).is_ok());
        assert!(TrainingState::from_bytes(&straight.classifier.to_safetensors().unwrap()).is_err());
    }
}
