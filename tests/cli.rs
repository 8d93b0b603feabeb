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
fn bench_reports_what_an_inference_plan_holds() {
    let out = resnet(&["bench", "--model", "resnet50", "--batch", "1", "--reps", "1", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = |key: &str| doc[key].as_u64().unwrap_or_else(|| panic!("{key} in {doc}"));
    let (arena, largest) = (bytes("plan_arena_bytes"), bytes("plan_largest_activation_bytes"));
    assert!(
        largest <= arena && arena <= 2 * largest,
        "arena {arena}, largest activation {largest}"
    );
    let scratch = bytes("scratch_bytes");
    assert!(scratch > 0 && scratch < 16 << 20, "scratch {scratch}");
    // ResNet-50: 25.6 M values and 53 k running statistics.
    assert_eq!(bytes("params_bytes"), (25_557_032 + 53_120) * 4);
    let planned = bytes("params_bytes") + bytes("plan_derived_weight_bytes") + arena + scratch;
    if cfg!(target_os = "linux") {
        // The program and its threads' stacks besides; gradients (another 102 MB) would
        // not fit.
        let resident = bytes("peak_rss_bytes");
        assert!(
            resident < planned + (48 << 20),
            "{resident} bytes resident for {planned} planned"
        );
    }
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

mod pretrained_commands {
    use super::resnet;
    use resnet_core::classifier::{default_classes, Classifier, LoadOptions};
    use resnet_core::data::augment::Normalization;
    use resnet_core::data::image::decode_image;
    use resnet_core::model::ResNetConfig;
    use resnet_core::Params;
    use std::path::PathBuf;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("resnet-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn model_file(dir: &std::path::Path) -> PathBuf {
        let params = Params::new(ResNetConfig::named("resnet8").unwrap(), 11).unwrap();
        let c = Classifier::new(
            params,
            default_classes(10),
            Normalization::PerChannel {
                mean: [0.5, 0.4, 0.3],
                std: [0.2, 0.25, 0.3],
            },
            Default::default(),
        );
        let path = dir.join("m.safetensors");
        std::fs::write(&path, c.to_safetensors().unwrap()).unwrap();
        path
    }

    #[test]
    fn classify_json_agrees_with_the_library() {
        let dir = tmp("classify");
        let weights = model_file(&dir);
        let img_path = dir.join("photo.png");
        let pixels: Vec<u8> = (0..64 * 48 * 3).map(|i| ((i * 37) % 251) as u8).collect();
        image::save_buffer(&img_path, &pixels, 64, 48, image::ExtendedColorType::Rgb8).unwrap();
        let out = resnet(&[
            "classify",
            "--weights",
            weights.to_str().unwrap(),
            "--top",
            "3",
            "--json",
            img_path.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let preds = doc["results"][0]["predictions"].as_array().unwrap();
        assert_eq!(preds.len(), 3);

        let mut lib = Classifier::load(&std::fs::read(&weights).unwrap(), &LoadOptions::default()).unwrap();
        let img = decode_image(&std::fs::read(&img_path).unwrap(), "photo").unwrap();
        let want = lib.classify(&[img], 3).unwrap();
        for (p, w) in preds.iter().zip(&want[0]) {
            assert_eq!(p["index"].as_u64().unwrap() as usize, w.index);
            assert_eq!(p["label"], w.label.as_str());
            assert!((p["probability"].as_f64().unwrap() - w.probability as f64).abs() < 1e-6);
        }
    }

    #[test]
    fn eval_on_a_cifar_binary_batch() {
        let dir = tmp("eval");
        let weights = model_file(&dir);
        let mut batch = Vec::new();
        for i in 0..20u32 {
            batch.push((i % 10) as u8);
            batch.extend((0..3072u32).map(|j| ((i * 31 + j * 7) % 256) as u8));
        }
        std::fs::write(dir.join("test_batch.bin"), &batch).unwrap();
        let out = resnet(&[
            "eval",
            "--weights",
            weights.to_str().unwrap(),
            "--data",
            dir.to_str().unwrap(),
            "--json",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["images"], 20);
        let top1 = doc["top1"].as_f64().unwrap();
        let confusion = doc["confusion"].as_array().unwrap();
        let diag: u64 = (0..10).map(|i| confusion[i][i].as_u64().unwrap()).sum();
        assert!((top1 - diag as f64 / 20.0).abs() < 1e-12);

        // A truncated batch names the file and the offset of the broken record.
        std::fs::write(dir.join("test_batch.bin"), &batch[..3073 * 2 + 100]).unwrap();
        let out = resnet(&[
            "eval",
            "--weights",
            weights.to_str().unwrap(),
            "--data",
            dir.to_str().unwrap(),
        ]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("test_batch.bin") && err.contains("6146"), "{err}");
    }

    #[test]
    fn eval_on_an_image_folder_of_mixed_sizes() {
        let dir = tmp("folder");
        let weights = model_file(&dir);
        for (class, sizes) in [
            ("airplane", [(40u32, 30u32), (64, 64)]),
            ("automobile", [(17, 90), (32, 32)]),
        ] {
            let d = dir.join("data/test").join(class);
            std::fs::create_dir_all(&d).unwrap();
            for (i, (w, h)) in sizes.into_iter().enumerate() {
                let px: Vec<u8> = (0..w * h * 3).map(|j| (j * 13 % 256) as u8).collect();
                image::save_buffer(d.join(format!("{i}.png")), &px, w, h, image::ExtendedColorType::Rgb8).unwrap();
            }
        }
        let data = dir.join("data");
        let out = resnet(&[
            "eval",
            "--weights",
            weights.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--json",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["images"], 4);
    }

    #[test]
    fn corrupt_weights_give_an_error_not_a_panic() {
        let dir = tmp("corrupt");
        let weights = model_file(&dir);
        let bytes = std::fs::read(&weights).unwrap();
        for (i, cut) in [7usize, 100, bytes.len() / 2, bytes.len() - 1].into_iter().enumerate() {
            let bad = dir.join(format!("bad{i}.safetensors"));
            std::fs::write(&bad, &bytes[..cut]).unwrap();
            let out = resnet(&[
                "convert",
                bad.to_str().unwrap(),
                dir.join("out.safetensors").to_str().unwrap(),
            ]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("cannot load") && !err.contains("panicked"),
                "{err}"
            );
        }
        assert!(!dir.join("out.safetensors").exists());
        // The good file converts, and a wrong --model is reported by tensor name.
        let out = resnet(&[
            "convert",
            weights.to_str().unwrap(),
            dir.join("out.safetensors").to_str().unwrap(),
            "--model",
            "resnet14",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("missing keys") && err.contains("layer1.1.conv1.weight"),
            "{err}"
        );
        let out = resnet(&[
            "convert",
            weights.to_str().unwrap(),
            dir.join("out.safetensors").to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn classify_reports_each_image_before_reading_the_next() {
        let dir = tmp("one-at-a-time");
        let weights = model_file(&dir);
        let good = dir.join("good.png");
        let pixels: Vec<u8> = (0..40 * 30 * 3).map(|i| ((i * 13) % 251) as u8).collect();
        image::save_buffer(&good, &pixels, 40, 30, image::ExtendedColorType::Rgb8).unwrap();
        let bad = dir.join("bad.png");
        std::fs::write(&bad, b"not an image").unwrap();
        let out = resnet(&[
            "classify",
            "--weights",
            weights.to_str().unwrap(),
            good.to_str().unwrap(),
            bad.to_str().unwrap(),
        ]);
        let (stdout, err) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(stdout.contains("good.png") && stdout.contains(" %  "), "{stdout}");
        assert!(err.contains("bad.png"), "{err}");
    }

    #[test]
    fn hostile_metadata_and_a_full_disk_give_clear_errors() {
        let dir = tmp("hostile");
        let weights = model_file(&dir);
        // stage_blocks of 10^9 in the metadata: refused before anything is allocated.
        let mut file = resnet_core::io::read_weights(&std::fs::read(&weights).unwrap()).unwrap();
        let mut config: serde_json::Value = serde_json::from_str(&file.metadata["config"]).unwrap();
        config["stage_blocks"] = serde_json::json!([1_000_000_000u64, 3, 3]);
        file.metadata.insert("config".into(), config.to_string());
        let refs = file
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), &t.shape[..], &t.data[..]));
        let hostile = dir.join("hostile.safetensors");
        std::fs::write(
            &hostile,
            resnet_core::io::safetensors::write_safetensors(refs, &file.metadata).unwrap(),
        )
        .unwrap();
        let out_path = dir.join("out.safetensors");
        let out = resnet(&["convert", hostile.to_str().unwrap(), out_path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("blocks per stage must be between 1 and 1024"), "{err}");
        assert!(!out_path.exists());

        // A disk that fills up (a file-size limit of 16 blocks): the error names the file
        // and no temporary file is left behind.
        let script = format!(
            "trap '' XFSZ; ulimit -f 16; exec '{}' convert '{}' '{}'",
            env!("CARGO_BIN_EXE_resnet"),
            weights.display(),
            out_path.display()
        );
        let out = std::process::Command::new("sh").args(["-c", &script]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(&out_path.display().to_string()), "{err}");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
        assert!(!out_path.exists());
    }
}

/// Output into a pipe that closes early (`resnet ... | head -1`) ends the process
/// quietly, as other command-line tools do, instead of a panic about a broken pipe.
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["bench", "--model", "resnet8", "--batch", "2", "--reps", "400"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(!status.success() || err.is_empty(), "{status:?}: {err}");
}
