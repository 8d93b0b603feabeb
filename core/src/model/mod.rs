//! The ResNets of He et al. 2015: configuration and the named zoo (`config`), residual
//! blocks (`block`), the assembled network with forward and backward (`resnet`), and the
//! per-layer table that `resnet info` prints (`info`).

pub mod arch;
pub mod block;
pub mod config;
pub mod info;
pub mod resnet;
pub mod weights;

pub use arch::{Arch, BlockArch, ConvBn, ShortcutKind};
pub use block::{Block, Shortcut};
pub use config::{BlockKind, BottleneckStride, ResNetConfig, ShortcutOption, Stem, MODEL_NAMES};
pub use info::LayerInfo;
pub use resnet::ResNet;
