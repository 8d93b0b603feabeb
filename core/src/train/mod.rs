//! Training: SGD with momentum and weight decay (`sgd`), learning-rate schedules
//! (`schedule`), and the `Trainer` that runs steps and evaluations (`trainer`).

pub mod checkpoint;
pub mod schedule;
pub mod sgd;
pub mod trainer;

pub use schedule::{Schedule, Warmup};
pub use sgd::Sgd;
pub use trainer::{EvalStats, StepStats, Trainer};
