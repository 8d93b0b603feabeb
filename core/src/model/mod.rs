//! The ResNets of He et al. 2015: configuration and the named zoo (`config`), the
//! structure as data (`arch`), the per-layer table that `resnet info` prints (`info`) and
//! weights by name (`weights`). Parameters live in `Params`; running the network is an
//! `ExecutionPlan`'s (inference) or a `TrainingPlan`'s (training) job.

pub mod arch;
pub mod config;
pub mod info;
pub mod weights;

pub use arch::{Arch, BlockArch, ConvBn, ShortcutKind};
pub use config::{BlockKind, BottleneckStride, ResNetConfig, ShortcutOption, Stem, MODEL_NAMES};
pub use info::LayerInfo;
