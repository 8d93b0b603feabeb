//! Learning-rate schedules: multi-step (the paper's /10 at 32k and 48k iterations),
//! cosine, constant; each with an optional warm-up.

use serde::{Deserialize, Serialize};

/// How the learning rate starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Warmup {
    /// A fixed rate for the first `iters` iterations (the paper's 0.01 for ResNet-110).
    Constant { iters: u64, lr: f32 },
    /// Linear from `start_factor * lr` to the schedule's rate over `iters` iterations.
    Linear { iters: u64, start_factor: f32 },
}

/// A learning rate as a function of the iteration (counted from 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    /// Always `base_lr`.
    Constant { base_lr: f32 },
    /// `base_lr * gamma^k` after the k-th milestone.
    MultiStep {
        base_lr: f32,
        milestones: Vec<u64>,
        gamma: f32,
    },
    /// Cosine annealing from `base_lr` to `min_lr` over `total` iterations.
    Cosine { base_lr: f32, total: u64, min_lr: f32 },
    /// Any schedule preceded by a warm-up.
    Warm { warmup: Warmup, then: Box<Schedule> },
}

impl Schedule {
    /// The paper's CIFAR schedule scaled to `total` iterations: lr divided by 10 at 50 %
    /// and 75 % (32k and 48k of 64k).
    pub fn paper(base_lr: f32, total: u64) -> Self {
        Schedule::MultiStep {
            base_lr,
            milestones: vec![total / 2, total * 3 / 4],
            gamma: 0.1,
        }
    }

    /// Adds a warm-up in front of this schedule.
    pub fn with_warmup(self, warmup: Warmup) -> Self {
        Schedule::Warm {
            warmup,
            then: Box::new(self),
        }
    }

    /// The learning rate at `iter`.
    pub fn lr(&self, iter: u64) -> f32 {
        match self {
            Schedule::Constant { base_lr } => *base_lr,
            Schedule::MultiStep {
                base_lr,
                milestones,
                gamma,
            } => {
                let passed = milestones.iter().filter(|&&m| iter >= m).count();
                base_lr * gamma.powi(passed as i32)
            }
            Schedule::Cosine { base_lr, total, min_lr } => {
                let t = (iter.min(*total) as f64) / (*total).max(1) as f64;
                (*min_lr as f64 + 0.5 * (*base_lr - *min_lr) as f64 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
            Schedule::Warm { warmup, then } => match *warmup {
                Warmup::Constant { iters, lr } if iter < iters => lr,
                Warmup::Linear { iters, start_factor } if iter < iters => {
                    let f = start_factor + (1.0 - start_factor) * iter as f32 / iters as f32;
                    f * then.lr(iter)
                }
                _ => then.lr(iter),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_schedule_divides_by_ten_at_half_and_three_quarters() {
        let s = Schedule::paper(0.1, 64_000);
        assert_eq!(s.lr(0), 0.1);
        assert_eq!(s.lr(31_999), 0.1);
        assert!((s.lr(32_000) - 0.01).abs() < 1e-9);
        assert!((s.lr(48_000) - 0.001).abs() < 1e-9);
        let w = s.with_warmup(Warmup::Constant { iters: 400, lr: 0.01 });
        assert_eq!(w.lr(399), 0.01);
        assert_eq!(w.lr(400), 0.1);
    }

    #[test]
    fn cosine_and_linear_warmup() {
        let c = Schedule::Cosine {
            base_lr: 1.0,
            total: 100,
            min_lr: 0.0,
        };
        assert!((c.lr(0) - 1.0).abs() < 1e-6);
        assert!((c.lr(50) - 0.5).abs() < 1e-6);
        assert!(c.lr(100).abs() < 1e-6);
        let w = Schedule::Constant { base_lr: 0.1 }.with_warmup(Warmup::Linear {
            iters: 10,
            start_factor: 0.0,
        });
        assert_eq!(w.lr(0), 0.0);
        assert!((w.lr(5) - 0.05).abs() < 1e-7);
        assert_eq!(w.lr(10), 0.1);
    }
}
