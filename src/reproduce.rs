//! `resnet reproduce`: the paper's CIFAR-10 experiments as one resumable command.
//! Figure 6 trains plain and residual nets of growing depth, Table 6 residual nets; each
//! net runs the paper's recipe (scaled to `--epochs`) in its own folder under `--out`,
//! one after another. A run found there is resumed, or kept when finished, so a set can
//! be stopped and continued across days. After each run the figure (training error
//! dashed, test error bold, plain and residual panels side by side) and a table beside
//! the paper's figures are written again.

use crate::load::open_data;
use crate::metrics::RunLog;
use crate::plot::{figure, log_series, svg_to_png, Panel, COLORS};
use crate::train::{
    existing_run, is_same_run, planned_run, thread_pool, train_in_pool, EpochReport, Loaded, TrainArgs, MAX_BATCH,
};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use resnet_core::data::cifar::Split;
use resnet_core::model::{Arch, ResNetConfig};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The paper's results this command reproduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Experiment {
    /// Figure 6: plain nets beside residual nets of the same depths.
    Figure6,
    /// Table 6: residual nets by depth.
    Table6,
}

impl Experiment {
    fn name(self) -> &'static str {
        match self {
            Experiment::Figure6 => "figure6",
            Experiment::Table6 => "table6",
        }
    }
}

/// The paper's Table 6: CIFAR-10 test error (%) of its residual nets by depth. For 110
/// layers the paper gives the best of 5 runs (their mean is 6.61 +- 0.16).
const PAPER_TABLE6: [(usize, f64); 6] = [
    (20, 8.75),
    (32, 7.51),
    (44, 7.17),
    (56, 6.97),
    (110, 6.43),
    (1202, 7.93),
];

/// Depths run when `--depths` is not given.
const FIGURE6_DEPTHS: [usize; 4] = [20, 32, 44, 56];
const TABLE6_DEPTHS: [usize; 5] = [20, 32, 44, 56, 110];

/// Arguments of `resnet reproduce`.
#[derive(Args)]
pub struct ReproduceArgs {
    /// Which result: figure6 (plain and residual nets) or table6 (residual nets).
    #[arg(value_enum)]
    experiment: Experiment,
    /// CIFAR-10 binary folder or tarball, or an image folder with train/ and test/.
    #[arg(long, required_unless_present = "report_only")]
    data: Option<PathBuf>,
    /// Epochs of each run; the schedule's milestones keep their fractions of the run
    /// (default: the paper's 64k iterations).
    #[arg(long)]
    epochs: Option<u64>,
    /// Depths, each 6n+2 (default 20,32,44,56; table6 adds 110).
    #[arg(long, value_delimiter = ',')]
    depths: Option<Vec<usize>>,
    /// Mini-batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Seed of every run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Folder of the runs, the figure and the table (default runs/<experiment>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only write the figure and the table from the runs in --out; train nothing.
    #[arg(long)]
    report_only: bool,
    /// Plain log lines instead of progress bars.
    #[arg(long)]
    quiet: bool,
}

/// One net of the set.
struct Net {
    name: String,
    depth: usize,
    residual: bool,
}

impl Net {
    /// The name the paper prints: "plain-20", "ResNet-20".
    fn label(&self) -> String {
        format!("{}-{}", if self.residual { "ResNet" } else { "plain" }, self.depth)
    }
}

/// Trains what is missing of the set, then writes the figure and the table.
pub fn run(args: ReproduceArgs) -> Result<()> {
    let nets = nets(args.experiment, &depths(&args)?);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(args.experiment.name()));
    if !args.report_only {
        train_set(&args, &out, &nets)?;
    }
    let written = write_report(&out, &nets, args.experiment)?;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The depths asked for, checked, sorted and without repeats.
fn depths(args: &ReproduceArgs) -> Result<Vec<usize>> {
    let default: &[usize] = match args.experiment {
        Experiment::Figure6 => &FIGURE6_DEPTHS,
        Experiment::Table6 => &TABLE6_DEPTHS,
    };
    let mut depths = args.depths.clone().unwrap_or_else(|| default.to_vec());
    if depths.is_empty() {
        bail!("--depths needs at least one depth");
    }
    depths.sort_unstable();
    depths.dedup();
    for &d in &depths {
        let kinds: &[&str] = match args.experiment {
            Experiment::Figure6 => &["plain", "resnet"],
            Experiment::Table6 => &["resnet"],
        };
        for kind in kinds {
            if ResNetConfig::named(&format!("{kind}{d}")).is_err() {
                bail!(
                    "--depths: there is no {kind} net of depth {d} (the CIFAR nets have 6n+2 layers: 8, 14, 20, 32, 44, 56, 110{})",
                    if *kind == "resnet" { ", 1202" } else { "" }
                );
            }
        }
    }
    Ok(depths)
}

/// The nets of the set in training order: by depth, the plain net before the residual one.
fn nets(experiment: Experiment, depths: &[usize]) -> Vec<Net> {
    let kinds: &[bool] = match experiment {
        Experiment::Figure6 => &[false, true],
        Experiment::Table6 => &[true],
    };
    depths
        .iter()
        .flat_map(|&depth| {
            kinds.iter().map(move |&residual| Net {
                name: format!("{}{depth}", if residual { "resnet" } else { "plain" }),
                depth,
                residual,
            })
        })
        .collect()
}

/// Trains each net in turn, resuming what `out` holds of it.
fn train_set(args: &ReproduceArgs, out: &Path, nets: &[Net]) -> Result<()> {
    if args.batch == 0 || args.batch > MAX_BATCH {
        bail!("--batch must be between 1 and {MAX_BATCH}, found {}", args.batch);
    }
    if args.epochs == Some(0) {
        bail!("--epochs must be at least 1");
    }
    let data = args.data.as_deref().context("--data is needed to train")?;
    let (pool, threads) = thread_pool(args.threads)?;
    let train = open_data(data, Split::Train, args.quiet)?;
    let test = open_data(data, Split::Test, args.quiet)?;
    // Every run is checked against what is in its folder before the first one trains.
    let mut plans = Vec::new();
    for net in nets {
        let dir = out.join(&net.name);
        let train_args = TrainArgs::paper(&net.name, data, args.epochs, args.batch, args.seed, dir.clone())
            .with_progress_bars(!args.quiet);
        let planned = planned_run(&train_args, &train, &test)?;
        let total = planned["total_iterations"].as_u64().unwrap_or(0);
        let (train_args, done) = match existing_run(&dir) {
            None => (train_args, 0),
            Some(found) if is_same_run(&found, &planned) => {
                let checkpoint = dir.join("checkpoint.safetensors");
                if !checkpoint.is_file() {
                    bail!(
                        "{} holds this run's files but no checkpoint.safetensors to resume from; move the folder away to start the run again",
                        dir.display()
                    );
                }
                let done = RunLog::read(&dir).map_or(0, |l| l.last_epoch_iteration);
                (train_args.resuming(checkpoint), done)
            }
            Some(_) => bail!(
                "{} holds a run with other settings than this set's {} {}; give another --out, or move that folder away",
                dir.display(),
                net.name,
                args.epochs.map_or("for 64k iterations".into(), |e| format!("for {e} epochs"))
            ),
        };
        plans.push((train_args, total, done));
    }
    let clock = Mutex::new(SetClock::new(out, nets, &plans));
    pool.install(|| {
        for (k, (net, (train_args, _, _))) in nets.iter().zip(plans).enumerate() {
            let header = |c: &SetClock| format!("[{}/{}] {}: {}", k + 1, nets.len(), net.name, c.summary());
            eprintln!("{}", header(&lock(&clock)));
            let note = |r: &EpochReport| {
                let mut c = lock(&clock);
                c.update(k, r);
                Some(header(&c))
            };
            train_in_pool(
                train_args,
                threads,
                Some(Loaded {
                    train: &train,
                    test: &test,
                }),
                Some(&note),
            )?;
            lock(&clock).finish(k);
            write_report(out, nets, args.experiment)?;
        }
        Ok(())
    })
}

/// The clock, also after a panic elsewhere poisoned its lock (it holds only estimates).
fn lock(clock: &Mutex<SetClock>) -> std::sync::MutexGuard<'_, SetClock> {
    clock.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long the set has left: each net's remaining iterations at its own measured
/// speed, or, before it has run, at the speed of the nearest measured net scaled by
/// depth (the CIFAR nets cost in proportion to their number of 3x3 layers).
struct SetClock {
    depth: Vec<usize>,
    remaining: Vec<u64>,
    seconds_per_iteration: Vec<Option<f64>>,
}

impl SetClock {
    fn new(out: &Path, nets: &[Net], plans: &[(TrainArgs, u64, u64)]) -> SetClock {
        let measured = |net: &Net| {
            let log = RunLog::read(&out.join(&net.name)).ok()?;
            let batch = existing_run(&out.join(&net.name))?["batch"].as_f64()?;
            log.median_images_per_s().map(|r| batch / r)
        };
        SetClock {
            depth: nets.iter().map(|n| n.depth).collect(),
            remaining: plans
                .iter()
                .map(|(_, total, done)| total.saturating_sub(*done))
                .collect(),
            seconds_per_iteration: nets.iter().map(measured).collect(),
        }
    }

    fn update(&mut self, k: usize, r: &EpochReport) {
        self.remaining[k] = r.total_iterations.saturating_sub(r.iteration);
        if r.seconds_per_iteration.is_finite() && r.seconds_per_iteration > 0.0 {
            self.seconds_per_iteration[k] = Some(r.seconds_per_iteration);
        }
    }

    fn finish(&mut self, k: usize) {
        self.remaining[k] = 0;
    }

    /// Seconds left for the whole set, when any net's speed is known.
    fn seconds_left(&self) -> Option<f64> {
        let known: Vec<(usize, f64)> = self
            .depth
            .iter()
            .zip(&self.seconds_per_iteration)
            .filter_map(|(&d, s)| s.map(|s| (d, s)))
            .collect();
        let per_layer = |depth: usize| {
            let (d, s) = known.iter().min_by_key(|(d, _)| d.abs_diff(depth))?;
            Some(s * (depth - 2) as f64 / (d - 2) as f64)
        };
        let mut total = 0.0;
        for k in 0..self.depth.len() {
            if self.remaining[k] > 0 {
                let spi = self.seconds_per_iteration[k].or_else(|| per_layer(self.depth[k]))?;
                total += spi * self.remaining[k] as f64;
            }
        }
        Some(total)
    }

    fn summary(&self) -> String {
        let finished = self.remaining.iter().filter(|r| **r == 0).count();
        if finished == self.remaining.len() {
            return format!("all {finished} runs finished");
        }
        let left = match self.seconds_left() {
            Some(s) => format!("about {} left for the set", duration(s)),
            None => "the set's time left is known after the first epoch".into(),
        };
        format!("{finished} of {} runs finished, {left}", self.remaining.len())
    }
}

/// A duration for people: "2 h 05 min", "7 min", "40 s".
fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        _ => format!("{} h {:02} min", s / 3600, s / 60 % 60),
    }
}

/// One net's results, read from its run folder.
struct Outcome<'a> {
    net: &'a Net,
    log: RunLog,
    /// The run's `run` settings from its `config.json`.
    run: serde_json::Value,
}

/// Writes `<experiment>.svg`, `<experiment>.png` and `table.md` into `out` from the runs found
/// there (a net without a run yet is left out of the figure and marked in the table).
fn write_report(out: &Path, nets: &[Net], experiment: Experiment) -> Result<Vec<PathBuf>> {
    let mut outcomes = Vec::new();
    for net in nets {
        let dir = out.join(&net.name);
        if !dir.join("metrics.jsonl").is_file() {
            continue;
        }
        let log = RunLog::read(&dir)?;
        let run = existing_run(&dir).unwrap_or(serde_json::Value::Null);
        outcomes.push(Outcome { net, log, run });
    }
    if outcomes.is_empty() {
        bail!(
            "{} holds no runs of {} yet (train them with --data, without --report-only)",
            out.display(),
            experiment.name()
        );
    }
    let svg = figure_svg(&outcomes, experiment);
    let name = experiment.name();
    let files = [
        (out.join(format!("{name}.svg")), svg.clone().into_bytes()),
        (out.join(format!("{name}.png")), svg_to_png(&svg, 1.5)?),
        (out.join("table.md"), table(nets, &outcomes, experiment)?.into_bytes()),
    ];
    for (path, bytes) in &files {
        crate::fsutil::write_atomic(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// The figure: for figure6 the plain panel beside the residual one, as in the paper.
fn figure_svg(outcomes: &[Outcome], experiment: Experiment) -> String {
    let mut depths: Vec<usize> = outcomes.iter().map(|o| o.net.depth).collect();
    depths.dedup();
    let color = |depth: usize| COLORS[depths.iter().position(|&d| d == depth).unwrap_or(0) % COLORS.len()];
    let series = |residual: bool| {
        outcomes
            .iter()
            .filter(|o| o.net.residual == residual)
            .flat_map(|o| log_series(&o.log, &o.net.label(), color(o.net.depth)))
            .collect::<Vec<_>>()
    };
    let (plain, residual) = (series(false), series(true));
    let panels = match experiment {
        Experiment::Figure6 => vec![
            Panel {
                title: "plain networks (CIFAR-10)",
                series: &plain,
            },
            Panel {
                title: "residual networks (CIFAR-10)",
                series: &residual,
            },
        ],
        Experiment::Table6 => vec![Panel {
            title: "residual networks (CIFAR-10)",
            series: &residual,
        }],
    };
    // The paper's panels run to 20 %; shorter runs end higher and get room above.
    let highest_end = outcomes
        .iter()
        .flat_map(|o| [o.log.final_test_error(), o.log.final_train_error()])
        .flatten()
        .filter(|e| e.is_finite())
        .fold(0.0f64, f64::max);
    let limit = (1.5 * highest_end / 10.0).ceil() * 10.0;
    figure(&panels, Some(limit.clamp(20.0, 100.0)))
}

/// The table: each net's final errors next to the paper's, with the runs' settings.
fn table(nets: &[Net], outcomes: &[Outcome], experiment: Experiment) -> Result<String> {
    let mut md = String::new();
    let _ = writeln!(md, "# CIFAR-10: {} of He et al. (2015)\n", experiment.name());
    let _ = writeln!(
        md,
        "| net | parameters | test error (%) | training error (%) | paper's test error (%) | iterations | wall time |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let by_name: BTreeMap<&str, &Outcome> = outcomes.iter().map(|o| (o.net.name.as_str(), o)).collect();
    for net in nets {
        let params = parameters(&net.name)?;
        let paper = if net.residual {
            PAPER_TABLE6
                .iter()
                .find(|(d, _)| *d == net.depth)
                .map_or("-".into(), |(_, e)| format!("{e:.2}"))
        } else {
            "(Figure 6 only)".into()
        };
        let percent = |e: Option<f64>| e.map_or("-".into(), |e| format!("{e:.2}"));
        match by_name.get(net.name.as_str()) {
            Some(o) => {
                let total = o.run["total_iterations"].as_u64().unwrap_or(0);
                let done = o.log.last_epoch_iteration;
                let state = if total > 0 && done >= total {
                    format!("{done}")
                } else {
                    format!("{done} of {total} (running)")
                };
                let _ = writeln!(
                    md,
                    "| {} | {:.2}M | {} | {} | {paper} | {state} | {} |",
                    net.label(),
                    params as f64 / 1e6,
                    percent(o.log.final_test_error()),
                    percent(o.log.final_train_error()),
                    duration(o.log.wall_seconds)
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "| {} | {:.2}M | - | - | {paper} | not started | - |",
                    net.label(),
                    params as f64 / 1e6
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\nTest error is the last epoch's, on the whole test split; training error is the mean over the \
         last epoch of the training batches' error (with augmentation), the dashed curves' end."
    );
    if let Some(run) = outcomes.iter().map(|o| &o.run).find(|r| r.is_object()) {
        let batches = run["batches_per_epoch"].as_u64().unwrap_or(1).max(1);
        let total = run["total_iterations"].as_u64().unwrap_or(0);
        let _ = writeln!(
            md,
            "\nSettings: {} iterations ({:.1} epochs of {} training images) at batch {}; learning rate 0.1, divided by 10 \
             at 50 % and 75 % of the run (the paper: 32k and 48k of 64k iterations); momentum {}, weight decay {}; \
             per-pixel mean subtraction; 4-pixel padding, random 32x32 crops and horizontal flips; seed {}; \
             data {} ({} test images).",
            total,
            total as f64 / batches as f64,
            run["train_images"],
            run["batch"],
            float(&run["momentum"]),
            float(&run["weight_decay"]),
            run["seed"],
            run["data"].as_str().unwrap_or("?"),
            run["test_images"],
        );
    }
    Ok(md)
}

/// A setting stored as f32, printed as the f32 it is ("0.9", not "0.8999999761581421").
fn float(v: &serde_json::Value) -> String {
    v.as_f64().map_or("?".into(), |x| (x as f32).to_string())
}

/// The parameter count of a net of the zoo.
fn parameters(name: &str) -> Result<usize> {
    let config = ResNetConfig::named(name)?;
    let size = config.input_size;
    Ok(Arch::of(&config)?
        .layer_table(size, size)?
        .iter()
        .map(|r| r.params)
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(40.4), "40 s");
        assert_eq!(duration(7.0 * 60.0 + 5.0), "7 min");
        assert_eq!(duration(2.0 * 3600.0 + 5.0 * 60.0), "2 h 05 min");
        assert_eq!(duration(f64::NAN), "0 s");
    }

    #[test]
    fn the_clock_scales_unmeasured_nets_by_depth() {
        let mut clock = SetClock {
            depth: vec![20, 56],
            remaining: vec![100, 200],
            seconds_per_iteration: vec![None, None],
        };
        assert_eq!(clock.seconds_left(), None);
        clock.update(
            0,
            &EpochReport {
                iteration: 50,
                total_iterations: 100,
                seconds_per_iteration: 0.1,
            },
        );
        // 50 left at 0.1 s, and 200 of a net with 54 instead of 18 layers: 0.3 s each.
        let left = clock.seconds_left().unwrap();
        assert!((left - (5.0 + 60.0)).abs() < 1e-9, "{left}");
        clock.finish(0);
        assert!((clock.seconds_left().unwrap() - 60.0).abs() < 1e-9);
        assert!(
            clock.summary().starts_with("1 of 2 runs finished, about 1 min left"),
            "{}",
            clock.summary()
        );
    }

    #[test]
    fn nets_come_by_depth_plain_first() {
        let names: Vec<String> = nets(Experiment::Figure6, &[20, 56])
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, ["plain20", "resnet20", "plain56", "resnet56"]);
        let labels: Vec<String> = nets(Experiment::Table6, &[110]).iter().map(Net::label).collect();
        assert_eq!(labels, ["ResNet-110"]);
    }

    #[test]
    fn the_paper_table_matches_its_parameter_counts() {
        // Table 6's parameter column, to the paper's digits.
        for (name, paper) in [
            ("resnet20", "0.27"),
            ("resnet32", "0.46"),
            ("resnet44", "0.66"),
            ("resnet56", "0.85"),
            ("resnet110", "1.7"),
        ] {
            let millions = parameters(name).unwrap() as f64 / 1e6;
            let digits = paper.len() - paper.find('.').unwrap() - 1;
            assert_eq!(format!("{millions:.digits$}"), paper, "{name}");
        }
    }
}
