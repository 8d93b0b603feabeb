//! The parts of the `resnet` command line that have integration tests of their own.

pub mod fetch;
