//! The `resnet` binary end to end.

use std::process::Command;

fn resnet(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(args)
        .output()
        .expect("run resnet")
}

#[test]
fn info_prints_the_layer_table_and_totals() {
    let out = resnet(&["info", "--model", "resnet20"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("layer3.2.conv2"), "{text}");
    assert!(text.contains("total: 269,722 parameters"), "{text}");
    assert!(text.contains("(40.6 M)"), "{text}");
}

#[test]
fn info_json_and_shortcut_option() {
    let out = resnet(&["info", "--model", "resnet18", "--shortcut", "C", "--json"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["model"], "resnet18");
    let layers = doc["layers"].as_array().unwrap();
    // Option C projects every shortcut, including layer1's identity ones.
    assert!(layers.iter().any(|l| l["name"] == "layer1.0.downsample.0"));
    assert!(doc["total_params"].as_u64().unwrap() > 11_689_512);
}

#[test]
fn unknown_model_is_a_clear_error() {
    let out = resnet(&["info", "--model", "resnet21"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("unknown model \"resnet21\"") && err.contains("resnet20"),
        "{err}"
    );
}
