//! `resnet reproduce` end to end on a tiny CIFAR-format data set: the set of runs, the
//! figure and the table, resuming a set, and refusing what does not belong to it.

mod common;

use common::{resnet, s, tiny_cifar};
use std::path::{Path, PathBuf};
use std::process::Output;

fn tmp(name: &str) -> PathBuf {
    common::tmp("reproduce", name)
}

/// `resnet reproduce figure6` on `data` into `out`: 100 images in batches of 10 for 5
/// epochs, 50 iterations, so that each run logs one training-error line.
fn figure6(data: &Path, out: &Path, depths: &str) -> Output {
    resnet(&[
        "reproduce",
        "figure6",
        "--data",
        s(data),
        "--epochs",
        "5",
        "--batch",
        "10",
        "--depths",
        depths,
        "--threads",
        "2",
        "--out",
        s(out),
        "--quiet",
    ])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The width and height a PNG's header declares.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn a_set_trains_each_net_then_draws_the_figure_and_the_table() {
    let dir = tmp("set");
    let data = tiny_cifar(&dir, 20);
    let out = dir.join("fig");
    let run = figure6(&data, &out, "20,8");
    assert!(run.status.success(), "{}", stderr(&run));
    let log = stderr(&run);
    // By depth, plain before residual, each announced with the set's progress.
    let order: Vec<usize> = ["[1/4] plain8", "[2/4] resnet8", "[3/4] plain20", "[4/4] resnet20"]
        .iter()
        .map(|h| log.find(h).unwrap_or_else(|| panic!("no {h} in {log}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{log}");
    assert!(log.contains("all 4 runs finished"), "{log}");
    for net in ["plain8", "resnet8", "plain20", "resnet20"] {
        let metrics = std::fs::read_to_string(out.join(net).join("metrics.jsonl")).unwrap();
        assert_eq!(metrics.matches("\"kind\":\"epoch\"").count(), 5, "{net}: {metrics}");
    }

    let svg = std::fs::read_to_string(out.join("figure6.svg")).unwrap();
    assert!(
        svg.contains("plain networks") && svg.contains("residual networks"),
        "{svg}"
    );
    // A training and a test curve for each of the four nets, in two panels.
    assert_eq!(svg.matches("<polyline").count(), 8, "{svg}");
    assert!(svg.contains("ResNet-20 test") && svg.contains("plain-8 train"), "{svg}");
    let png = std::fs::read(out.join("figure6.png")).unwrap();
    assert_eq!(png_size(&png), (2160, 660));

    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    let row = |label: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("| {label} |")))
            .unwrap_or_else(|| panic!("no {label} row in {table}"))
            .to_string()
    };
    // ResNet-20 beside the paper's 8.75 %, with its parameter count and iterations.
    let r20 = row("ResNet-20");
    assert!(
        r20.contains("| 0.27M |") && r20.contains("| 8.75 |") && r20.contains("| 50 |"),
        "{r20}"
    );
    assert!(row("plain-8").contains("(Figure 6 only)"), "{table}");
    // The errors come from the runs' logs: the test error of the last epoch.
    let metrics = std::fs::read_to_string(out.join("resnet20").join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    let expected = format!("| {:.2} |", 100.0 * last["test_error"].as_f64().unwrap());
    assert!(r20.contains(&expected), "{r20} lacks {expected}");
    assert!(
        table.contains("50 iterations (5.0 epochs of 100 training images) at batch 10"),
        "{table}"
    );
}

#[test]
fn a_continued_set_keeps_its_finished_runs_and_refuses_other_settings() {
    let dir = tmp("continue");
    let data = tiny_cifar(&dir, 20);
    let out = dir.join("fig");
    let first = figure6(&data, &out, "8");
    assert!(first.status.success(), "{}", stderr(&first));
    let files = |net: &str| {
        ["checkpoint.safetensors", "metrics.jsonl", "best.safetensors"]
            .map(|f| std::fs::read(out.join(net).join(f)).unwrap())
    };
    let before = (files("plain8"), files("resnet8"));

    // The same set with one more depth: the depth-8 runs are complete and stay as they were.
    let more = figure6(&data, &out, "8,14");
    assert!(more.status.success(), "{}", stderr(&more));
    assert!(stderr(&more).contains("is complete"), "{}", stderr(&more));
    assert!(
        before == (files("plain8"), files("resnet8")),
        "a finished run was touched"
    );
    assert!(out.join("resnet14").join("checkpoint.safetensors").is_file());
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(
        table.contains("| ResNet-14 |") && !table.contains("not started"),
        "{table}"
    );

    // Other settings (more epochs) are another set: refused before anything is trained.
    let other = resnet(&[
        "reproduce",
        "figure6",
        "--data",
        s(&data),
        "--epochs",
        "6",
        "--batch",
        "10",
        "--depths",
        "8",
        "--out",
        s(&out),
        "--quiet",
    ]);
    assert!(!other.status.success());
    assert!(
        stderr(&other).contains("plain8 holds a run with other settings"),
        "{}",
        stderr(&other)
    );
    assert!(
        before == (files("plain8"), files("resnet8")),
        "a refused set changed a run"
    );
}

#[test]
fn report_only_reads_the_runs_it_finds_and_bad_arguments_are_clear_errors() {
    let dir = tmp("report");
    let data = tiny_cifar(&dir, 20);
    let out = dir.join("fig");
    let empty = resnet(&["reproduce", "table6", "--report-only", "--out", s(&out)]);
    assert!(!empty.status.success());
    assert!(stderr(&empty).contains("holds no runs of table6"), "{}", stderr(&empty));

    let run = figure6(&data, &out, "8");
    assert!(run.status.success(), "{}", stderr(&run));
    // Table 6 over the same folder: its residual net is there, the others not yet.
    let report = resnet(&[
        "reproduce",
        "table6",
        "--report-only",
        "--depths",
        "8,20",
        "--out",
        s(&out),
    ]);
    assert!(report.status.success(), "{}", stderr(&report));
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(
        table.contains("| ResNet-20 | 0.27M | - | - | 8.75 | not started | - |"),
        "{table}"
    );
    assert!(!table.contains("plain-8"), "{table}");
    assert_eq!(png_size(&std::fs::read(out.join("table6.png")).unwrap()), (1080, 660));

    for (args, expected) in [
        (vec!["--depths", "21"], "no plain net of depth 21"),
        (vec!["--depths", "1202"], "no plain net of depth 1202"),
        (vec!["--epochs", "0"], "--epochs must be at least 1"),
        (vec!["--batch", "0"], "--batch must be between 1 and 4096"),
    ] {
        let mut all = vec!["reproduce", "figure6", "--data", s(&data), "--out", s(&out)];
        all.extend(args);
        let bad = resnet(&all);
        assert!(!bad.status.success());
        assert!(stderr(&bad).contains(expected), "{all:?}: {}", stderr(&bad));
    }
    let no_data = resnet(&["reproduce", "figure6", "--out", s(&out)]);
    assert!(!no_data.status.success());
    assert!(stderr(&no_data).contains("--data"), "{}", stderr(&no_data));
}
