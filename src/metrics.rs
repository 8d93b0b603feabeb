//! A run folder's `metrics.jsonl` read back: the training and test error curves, the
//! final errors, the training speed and the wall time, for `resnet plot` and
//! `resnet reproduce`.

use anyhow::{Context, Result};
use std::path::Path;

/// What a run's log says.
#[derive(Debug, Default)]
pub struct RunLog {
    /// (iteration, training error in %) of every training-metrics line.
    pub train: Vec<(f64, f64)>,
    /// (iteration, test error in %) at the end of every epoch.
    pub test: Vec<(f64, f64)>,
    /// The iteration of the last epoch that ended.
    pub last_epoch_iteration: u64,
    /// Training images per second of each epoch.
    pub images_per_s: Vec<f64>,
    /// Seconds the run's processes spent up to their last epoch's end, summed over the
    /// sessions a resumed run was trained in.
    pub wall_seconds: f64,
}

impl RunLog {
    /// Reads `dir/metrics.jsonl`.
    pub fn read(dir: &Path) -> Result<RunLog> {
        let path = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        RunLog::parse(&text).with_context(|| format!("cannot read {}", path.display()))
    }

    /// Parses the lines of a log; blank lines are skipped.
    pub fn parse(text: &str) -> Result<RunLog> {
        let mut log = RunLog::default();
        // Each process that trains the run counts its seconds from its own start: a
        // count that goes down starts the next session.
        let mut session_seconds = 0.0f64;
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("line {} is not JSON", n + 1))?;
            let it = v["iteration"].as_f64().unwrap_or(f64::NAN);
            match v["kind"].as_str() {
                Some("train") => log.train.push((it, 100.0 * v["error"].as_f64().unwrap_or(f64::NAN))),
                Some("epoch") => {
                    log.test
                        .push((it, 100.0 * v["test_error"].as_f64().unwrap_or(f64::NAN)));
                    log.last_epoch_iteration = v["iteration"].as_u64().unwrap_or(0);
                    if let Some(rate) = v["images_per_s"].as_f64().filter(|r| r.is_finite() && *r > 0.0) {
                        log.images_per_s.push(rate);
                    }
                    if let Some(s) = v["seconds"].as_f64().filter(|s| s.is_finite() && *s >= 0.0) {
                        if s < session_seconds {
                            log.wall_seconds += session_seconds;
                        }
                        session_seconds = s;
                    }
                }
                _ => {}
            }
        }
        log.wall_seconds += session_seconds;
        Ok(log)
    }

    /// The test error (%) at the end of the last epoch.
    pub fn final_test_error(&self) -> Option<f64> {
        self.test.last().map(|p| p.1)
    }

    /// The mean training error (%) of the training-metrics lines after the last epoch
    /// but one ended: what the dashed curve ends at.
    pub fn final_train_error(&self) -> Option<f64> {
        let from = self.test.iter().rev().nth(1).map_or(0.0, |p| p.0);
        let tail: Vec<f64> = self
            .train
            .iter()
            .filter(|p| p.0 > from && p.0 <= self.last_epoch_iteration as f64)
            .map(|p| p.1)
            .collect();
        (!tail.is_empty()).then(|| tail.iter().sum::<f64>() / tail.len() as f64)
    }

    /// The median training speed over the epochs, in images per second.
    pub fn median_images_per_s(&self) -> Option<f64> {
        let mut rates = self.images_per_s.clone();
        rates.sort_by(f64::total_cmp);
        rates.get(rates.len() / 2).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_final_errors_and_wall_time_summed_over_sessions() {
        let text = r#"{"kind":"train","iteration":50,"epoch":0.5,"error":0.8,"loss":2.0,"lr":0.1}
{"kind":"train","iteration":100,"epoch":1.0,"error":0.6,"loss":1.5,"lr":0.1}
{"kind":"epoch","iteration":100,"epoch":1,"test_error":0.5,"images_per_s":900.0,"seconds":30.0}

{"kind":"train","iteration":150,"epoch":1.5,"error":0.4,"loss":1.0,"lr":0.1}
{"kind":"train","iteration":200,"epoch":2.0,"error":0.2,"loss":0.5,"lr":0.1}
{"kind":"epoch","iteration":200,"epoch":2,"test_error":0.25,"images_per_s":1000.0,"seconds":20.0}
{"kind":"epoch","iteration":300,"epoch":3,"test_error":0.2,"images_per_s":1100.0,"seconds":45.0}
"#;
        let log = RunLog::parse(text).unwrap();
        assert_eq!(
            log.train,
            vec![(50.0, 80.0), (100.0, 60.0), (150.0, 40.0), (200.0, 20.0)]
        );
        assert_eq!(log.test, vec![(100.0, 50.0), (200.0, 25.0), (300.0, 20.0)]);
        assert_eq!(log.last_epoch_iteration, 300);
        assert_eq!(log.final_test_error(), Some(20.0));
        // No training line after iteration 200: no training error for the last epoch.
        assert_eq!(log.final_train_error(), None);
        // The second session restarted its clock at iteration 200.
        assert_eq!(log.wall_seconds, 30.0 + 45.0);
        assert_eq!(log.median_images_per_s(), Some(1000.0));
        let two = RunLog::parse(&text.lines().take(7).collect::<Vec<_>>().join("\n")).unwrap();
        assert_eq!(two.final_train_error(), Some(30.0));
    }

    #[test]
    fn a_broken_line_is_an_error_naming_it() {
        let err = RunLog::parse("{\"kind\":\"train\"}\nnot json\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }

    #[test]
    fn an_empty_log_has_no_final_errors() {
        let log = RunLog::parse("").unwrap();
        assert_eq!(log.final_test_error(), None);
        assert_eq!(log.final_train_error(), None);
        assert_eq!(log.median_images_per_s(), None);
        assert_eq!(log.wall_seconds, 0.0);
    }
}
