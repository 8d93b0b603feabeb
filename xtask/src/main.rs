//! `cargo xtask <task>`: project chores that need more than one cargo command.
//!
//! - `test`: every check CI runs: formatting, clippy, all Rust tests, a few seconds of
//!   each fuzz target (`fuzz/`, nightly only: skipped with a message without it), the
//!   wasm32 build, then the npm package (`wasm`), the tests' own build of it (feature
//!   `test-hooks`), their Node tests (`wasm/tests-node/`) and the page's tests in
//!   Chromium (`web/tests/`, which run the relaxed-SIMD build, and the threaded build on
//!   a cross-origin-isolated server).
//! - `wasm`: builds `resnet-wasm` for wasm32 three times: SIMD128, SIMD128 plus relaxed
//!   SIMD (in `<target>/relaxed`) and the threaded build (`threads.rs`, in
//!   `<target>/threads`); runs `wasm-bindgen` on each (installing the CLI at the crate's
//!   exact version when missing; the first two must have identical glue) and `wasm-opt`
//!   when present (`WASM_OPT=path`, or `WASM_OPT=npm` for npm's binaryen under
//!   `<target>/tools`), writes the npm package (`resnet_wasm_bg.wasm`,
//!   `resnet_wasm_relaxed_bg.wasm` and `threads/`) to `<target>/wasm-pkg/package/` and
//!   `npm pack`s it beside.
//! - `fuzz-smoke`: only the few seconds of each fuzz target that `test` runs.
//! - `node-test`: the package, the tests' own build of it and the Node tests only.
//! - `web [--isolated] [PORT]`: builds the package, copies it to `web/pkg/` and serves
//!   `web/` on 127.0.0.1 (port 8000 by default, 0 for any free one), printing the address;
//!   `--isolated` adds the COOP/COEP headers that make the page cross-origin isolated, so
//!   that it runs the threaded build.

mod threads;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("wasm") => wasm().map(|_| ()),
        Some("fuzz-smoke") => fuzz_smoke(),
        Some("node-test") => wasm().and_then(|t| node_tests(&t, &wasm_test_package()?, &release_cli()?)),
        Some("web") => {
            let isolated = args.iter().any(|a| a == "--isolated");
            let port = args.iter().skip(1).find(|a| *a != "--isolated");
            web(port.map(String::as_str), isolated)
        }
        _ => {
            eprintln!("usage: cargo xtask test | wasm | node-test | web [--isolated] [PORT] | fuzz-smoke");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command from the workspace root, failing with its name if it fails.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    eprintln!("xtask: running {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {}` failed with {status}", args.join(" ")))
    }
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Installs the wasm32 target through rustup unless it is already there.
fn ensure_wasm_target() -> Result<(), String> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-unknown-unknown")
    {
        return Ok(());
    }
    run("rustup", &["target", "add", "wasm32-unknown-unknown"])
}

fn test() -> Result<(), String> {
    run("cargo", &["fmt", "--all", "--", "--check"])?;
    run(
        "cargo",
        &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
    )?;
    // The threaded build's own code (`wasm/src/threads.rs`), which the workspace's clippy
    // leaves out: it is behind the feature `threads`.
    run(
        "cargo",
        &[
            "clippy",
            "-p",
            "resnet-wasm",
            "--features",
            "threads",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    run("cargo", &["test", "--workspace"])?;
    // The Node and browser tests compare with the CLI that `cargo test` has just built,
    // before the MPI tests rebuild it with the `mpi` feature.
    let cli = tested_cli()?;
    ensure_wasm_target()?;
    run(
        "cargo",
        &[
            "build",
            "-p",
            "resnet-core",
            "--target",
            "wasm32-unknown-unknown",
            "--release",
        ],
    )?;
    let tarball = wasm()?;
    let test_tarball = wasm_test_package()?;
    node_tests(&tarball, &test_tarball, &cli)?;
    web_package()?;
    browser_tests(&cli)?;
    mpi_tests()?;
    fuzz_smoke()?;
    eprintln!("xtask: all checks passed");
    Ok(())
}

/// Debian packages the `mpi` feature builds and runs with: Open MPI (library, headers,
/// `mpirun`) and libclang for the bindings' generator.
const MPI_PACKAGES: [&str; 3] = ["libopenmpi-dev", "openmpi-bin", "libclang-dev"];

/// Seconds the MPI tests may run once built: each of their runs is bounded by `timeout`
/// too; this bounds the whole.
const MPI_TEST_SECONDS: &str = "900";

/// Installs the Debian `packages` that are missing with apt (the tests run as root);
/// `purpose` names what needs them in the error.
fn ensure_debian_packages(packages: &[&str], purpose: &str) -> Result<(), String> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map_or(true, |o| {
                    !String::from_utf8_lossy(&o.stdout).contains("install ok installed")
                })
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run("apt-get", &["update", "-qq"])?;
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("cannot start apt-get: {e}"))?;
    if !status.success() {
        return Err(format!(
            "installing {} failed ({status}); {purpose} needs them",
            missing.join(" ")
        ));
    }
    Ok(())
}

/// The `mpi` feature: clippy on it, then `tests/mpi.rs` (2 ranks under `mpirun`), bounded
/// in time.
fn mpi_tests() -> Result<(), String> {
    ensure_debian_packages(&MPI_PACKAGES, "the MPI build and tests")?;
    let features = ["-p", "resnet", "--features", "mpi"];
    run(
        "cargo",
        &[&["clippy"][..], &features, &["--all-targets", "--", "-D", "warnings"]].concat(),
    )?;
    run(
        "cargo",
        &[&["test"][..], &features, &["--test", "mpi", "--no-run"]].concat(),
    )?;
    run(
        "timeout",
        &[
            &["-k", "10", MPI_TEST_SECONDS, "cargo", "test"][..],
            &features,
            &["--test", "mpi"],
        ]
        .concat(),
    )
}

/// The fuzz targets of `fuzz/Cargo.toml`, each run for [`FUZZ_SMOKE_SECONDS`].
const FUZZ_TARGETS: [&str; 8] = [
    "safetensors",
    "torch_zip",
    "torch_legacy",
    "pickle",
    "cifar_binary",
    "cifar_tar",
    "image",
    "weight_metadata",
];

/// Seconds each fuzz target runs in `cargo xtask test`: a smoke test that the targets
/// build and survive their seeds and a few thousand mutations (long runs: fuzz/README.md).
const FUZZ_SMOKE_SECONDS: u32 = 5;

/// Runs every fuzz target briefly with cargo-fuzz on the nightly toolchain (installing
/// cargo-fuzz when missing), its corpus a copy of the committed seeds under the target
/// directory; skipped with a message where nightly is absent.
fn fuzz_smoke() -> Result<(), String> {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        eprintln!(
            "xtask: skipping the fuzz smoke runs: no nightly toolchain (`rustup toolchain install nightly` enables them)"
        );
        return Ok(());
    }
    if version_of("cargo-fuzz").is_none() {
        run("cargo", &["install", "cargo-fuzz", "--locked"])?;
    }
    let root = workspace_root();
    let target = target_dir().join("fuzz");
    let target = target.to_str().ok_or("the target directory is not UTF-8")?;
    let fuzz = |args: &[&str]| -> Result<(), String> {
        eprintln!("xtask: running cargo +nightly fuzz {}", args.join(" "));
        let status = Command::new("cargo")
            .arg("+nightly")
            .arg("fuzz")
            .args(args)
            .current_dir(root.join("fuzz"))
            .status()
            .map_err(|e| format!("cannot start cargo fuzz: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`cargo +nightly fuzz {}` failed with {status}", args.join(" ")))
        }
    };
    fuzz(&["build", "-O", "--target-dir", target])?;
    for t in FUZZ_TARGETS {
        let corpus = target_dir().join("fuzz-smoke").join(t);
        std::fs::create_dir_all(&corpus).map_err(|e| format!("cannot create {}: {e}", corpus.display()))?;
        let seeds = root.join("fuzz/seeds").join(t);
        for entry in std::fs::read_dir(&seeds).map_err(|e| format!("cannot read {}: {e}", seeds.display()))? {
            let path = entry
                .map_err(|e| format!("cannot read {}: {e}", seeds.display()))?
                .path();
            copy(
                &path,
                &corpus.join(path.file_name().expect("a file in the seed folder")),
            )?;
        }
        let corpus = corpus.to_str().ok_or("the target directory is not UTF-8")?;
        let time = format!("-max_total_time={FUZZ_SMOKE_SECONDS}");
        fuzz(&[
            "run",
            "-O",
            "--target-dir",
            target,
            t,
            corpus,
            "--",
            &time,
            "-rss_limit_mb=2048",
        ])?;
    }
    Ok(())
}

/// The cargo target directory (honours `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    }
}

/// The `version = "..."` of package `name` in Cargo.lock.
fn locked_version(name: &str) -> Result<String, String> {
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock"))
        .map_err(|e| format!("cannot read Cargo.lock: {e}"))?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == format!("name = \"{name}\"") {
            if let Some(v) = lines.next().and_then(|v| v.trim().strip_prefix("version = \"")) {
                return Ok(v.trim_end_matches('"').to_string());
            }
        }
    }
    Err(format!("{name} is not in Cargo.lock"))
}

/// The first line a program prints for `--version`, if it runs.
fn version_of(program: &str) -> Option<String> {
    let out = Command::new(program).arg("--version").output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    })
}

/// Installs wasm-bindgen-cli at exactly `version` unless `wasm-bindgen --version` says it.
fn ensure_wasm_bindgen(version: &str) -> Result<(), String> {
    let want = format!("wasm-bindgen {version}");
    match version_of("wasm-bindgen") {
        Some(v) if v == want => return Ok(()),
        Some(v) => eprintln!("xtask: found {v}, need {want}"),
        None => eprintln!("xtask: wasm-bindgen not found, need {want}"),
    }
    // Not --locked: the CLI's lock file pins crates that no longer build.
    run(
        "cargo",
        &["install", "wasm-bindgen-cli", "--version", version, "--force"],
    )?;
    match version_of("wasm-bindgen") {
        Some(v) if v == want => Ok(()),
        other => Err(format!(
            "after installing, `wasm-bindgen --version` gives {other:?}, not {want:?}: is ~/.cargo/bin first on PATH?"
        )),
    }
}

/// Bytes of `path` after `gzip -9`.
fn gzipped_size(path: &Path) -> Option<usize> {
    let out = Command::new("gzip").args(["-9", "-c"]).arg(path).output().ok()?;
    out.status.success().then_some(out.stdout.len())
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `wasm-opt` of the npm package `binaryen`, installed under `<target>/tools` if missing.
fn npm_wasm_opt() -> Result<String, String> {
    let tools = target_dir().join("tools");
    let bin = tools.join("node_modules/.bin/wasm-opt");
    if !bin.exists() {
        std::fs::create_dir_all(&tools).map_err(|e| format!("cannot create {}: {e}", tools.display()))?;
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--no-save", "--prefix"])
            .arg(&tools)
            .arg(format!("binaryen@{BINARYEN_NPM_VERSION}"))
            .status()
            .map_err(|e| format!("cannot start npm: {e}"))?;
        if !status.success() {
            return Err(format!("npm install binaryen failed with {status}"));
        }
    }
    Ok(bin.display().to_string())
}

/// The npm `binaryen` that `WASM_OPT=npm` installs.
const BINARYEN_NPM_VERSION: &str = "132.0.0";

/// Builds `resnet-wasm` for wasm32 with `target_features` (e.g. `+simd128`) and the crate
/// `features`, under `<target>/<subdir>` when given (a build with other target features
/// must not overwrite the main build's artifacts), and returns the path of the `.wasm`.
fn cargo_build_wasm(target_features: &str, features: &[&str], subdir: Option<&str>) -> Result<PathBuf, String> {
    // `.cargo/config.toml` adds +simd128 for wasm32; RUSTFLAGS (which replaces the
    // config's flags) is always set here, so that an environment cannot drop it.
    let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
    flags = format!("{flags} -C target-feature={target_features}")
        .trim()
        .to_string();
    let target = match subdir {
        Some(d) => target_dir().join(d),
        None => target_dir(),
    };
    let mut args = vec![
        "build".to_string(),
        "-p".into(),
        "resnet-wasm".into(),
        "--lib".into(),
        "--target".into(),
        "wasm32-unknown-unknown".into(),
        "--release".into(),
        "--target-dir".into(),
        target.display().to_string(),
    ];
    if !features.is_empty() {
        args.push("--features".into());
        args.push(features.join(","));
    }
    eprintln!("xtask: running RUSTFLAGS='{flags}' cargo {}", args.join(" "));
    let status = Command::new("cargo")
        .args(&args)
        .env("RUSTFLAGS", &flags)
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("cannot start cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building resnet-wasm failed with {status}"));
    }
    Ok(target.join("wasm32-unknown-unknown/release/resnet_wasm.wasm"))
}

/// Runs `wasm-bindgen --target web` on `built`, writing `resnet_wasm.js` and
/// `resnet_wasm_bg.wasm` (with their `.d.ts`) into `dir`.
fn bindgen(built: &Path, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (built_s, dir_s) = (built.display().to_string(), dir.display().to_string());
    run(
        "wasm-bindgen",
        &[
            "--target",
            "web",
            "--out-name",
            "resnet_wasm",
            "--out-dir",
            &dir_s,
            &built_s,
        ],
    )
}

/// Runs wasm-opt -O3 on `wasm_file` in place when one is found (`WASM_OPT=path`, or
/// `WASM_OPT=npm` for npm's binaryen), with the features rustc uses for wasm32 plus SIMD
/// and `extra` (so that wasm-opt accepts the module and adds nothing beyond them);
/// keeps the module as it is when wasm-opt is absent or fails.
fn optimize(wasm_file: &Path, extra: &[&str]) -> Result<(), String> {
    let wasm_opt = match std::env::var("WASM_OPT") {
        // The npm registry's binaryen (wasm-opt compiled to JS/wasm), kept under the target dir.
        Ok(v) if v == "npm" => npm_wasm_opt()?,
        Ok(v) => v,
        Err(_) => "wasm-opt".to_string(),
    };
    let Some(v) = version_of(&wasm_opt) else {
        eprintln!("xtask: wasm-opt not found (set WASM_OPT or install binaryen); skipping it");
        return Ok(());
    };
    let tmp = wasm_file.with_extension("opt.wasm");
    let w = wasm_file.display().to_string();
    let t = tmp.display().to_string();
    let mut args = vec![
        "-O3",
        "--enable-simd",
        "--enable-bulk-memory",
        "--enable-sign-ext",
        "--enable-mutable-globals",
        "--enable-nontrapping-float-to-int",
        "--enable-multivalue",
        "--enable-reference-types",
    ];
    args.extend(extra);
    args.extend([w.as_str(), "-o", t.as_str()]);
    match run(&wasm_opt, &args) {
        Ok(()) => std::fs::rename(&tmp, wasm_file).map_err(|e| e.to_string()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            eprintln!("xtask: {v} failed ({e}); keeping the module unoptimised");
            Ok(())
        }
    }
}

/// Builds the npm package and returns the path of its `npm pack` tarball.
fn wasm() -> Result<PathBuf, String> {
    let root = workspace_root();
    ensure_wasm_target()?;
    let bindgen_version = locked_version("wasm-bindgen")?;
    ensure_wasm_bindgen(&bindgen_version)?;
    let built = cargo_build_wasm("+simd128", &[], None)?;
    let out = target_dir().join("wasm-pkg");
    let pkg = out.join("package");
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| format!("cannot clear {}: {e}", out.display()))?;
    }
    bindgen(&built, &pkg)?;
    let wasm_file = pkg.join("resnet_wasm_bg.wasm");
    let before = std::fs::metadata(&wasm_file).map_err(|e| e.to_string())?.len();
    optimize(&wasm_file, &[])?;
    // The relaxed-SIMD build: the same crate with `+relaxed-simd` (fused multiply-adds),
    // in its own target folder; its glue must be the SIMD128 build's, so that one
    // `resnet_wasm.js` serves both and `init` picks the module.
    let relaxed = cargo_build_wasm("+simd128,+relaxed-simd", &[], Some("relaxed"))?;
    let relaxed_dir = out.join("relaxed");
    bindgen(&relaxed, &relaxed_dir)?;
    let glue = |d: &Path| std::fs::read(d.join("resnet_wasm.js")).map_err(|e| e.to_string());
    if glue(&relaxed_dir)? != glue(&pkg)? {
        return Err("the relaxed-SIMD build's resnet_wasm.js differs from the SIMD128 build's".into());
    }
    let relaxed_file = pkg.join("resnet_wasm_relaxed_bg.wasm");
    std::fs::rename(relaxed_dir.join("resnet_wasm_bg.wasm"), &relaxed_file).map_err(|e| e.to_string())?;
    std::fs::remove_dir_all(&relaxed_dir).map_err(|e| e.to_string())?;
    optimize(&relaxed_file, &["--enable-relaxed-simd"])?;
    // The threaded build, with its own glue (shared memory, the pool's exports); its
    // Workers' scripts are `pool.js` and `pool-worker.js`; types come from `index.d.ts`.
    let threaded = threads::build()?;
    let threads_dir = pkg.join("threads");
    bindgen(&threaded, &threads_dir)?;
    for types in ["resnet_wasm.d.ts", "resnet_wasm_bg.wasm.d.ts"] {
        std::fs::remove_file(threads_dir.join(types)).map_err(|e| e.to_string())?;
    }
    optimize(&threads_dir.join("resnet_wasm_bg.wasm"), &["--enable-threads"])?;
    let js = root.join("wasm/js");
    for f in [
        "api.js",
        "index.js",
        "node.js",
        "index.d.ts",
        "async.js",
        "async-node.js",
        "async-worker.js",
        "host.js",
        "async.d.ts",
        "pool.js",
        "pool-worker.js",
    ] {
        copy(&js.join(f), &pkg.join(f))?;
    }
    copy(&root.join("wasm/README.md"), &pkg.join("README.md"))?;
    let mit = std::fs::read_to_string(root.join("wasm/LICENSE-MIT")).map_err(|e| e.to_string())?;
    let apache = std::fs::read_to_string(root.join("wasm/LICENSE-APACHE")).map_err(|e| e.to_string())?;
    write(
        &pkg.join("LICENSE"),
        &format!(
            "resnet-wasm is licensed under either of the MIT licence or the Apache License, \
             Version 2.0, at your option.\n\n{mit}\n\n{apache}"
        ),
    )?;
    let version = env!("CARGO_PKG_VERSION");
    let package_json = format!(
        r#"{{
  "name": "resnet-wasm",
  "version": "{version}",
  "description": "The ResNets of He et al. (2015) in WebAssembly (SIMD128): classify images and train in the browser and in Node",
  "license": "MIT OR Apache-2.0",
  "type": "module",
  "main": "./node.js",
  "module": "./index.js",
  "browser": "./index.js",
  "types": "./index.d.ts",
  "exports": {{
    ".": {{
      "types": "./index.d.ts",
      "browser": "./index.js",
      "node": "./node.js",
      "default": "./index.js"
    }},
    "./async": {{
      "types": "./async.d.ts",
      "browser": "./async.js",
      "node": "./async-node.js",
      "default": "./async.js"
    }},
    "./resnet_wasm_bg.wasm": "./resnet_wasm_bg.wasm",
    "./resnet_wasm_relaxed_bg.wasm": "./resnet_wasm_relaxed_bg.wasm",
    "./package.json": "./package.json"
  }},
  "files": [
    "index.js",
    "node.js",
    "api.js",
    "index.d.ts",
    "async.js",
    "async-node.js",
    "async-worker.js",
    "host.js",
    "async.d.ts",
    "pool.js",
    "pool-worker.js",
    "resnet_wasm.js",
    "resnet_wasm.d.ts",
    "resnet_wasm_bg.wasm",
    "resnet_wasm_relaxed_bg.wasm",
    "resnet_wasm_bg.wasm.d.ts",
    "threads/",
    "README.md",
    "LICENSE"
  ],
  "sideEffects": ["./node.js", "./async-node.js"],
  "engines": {{ "node": ">=20" }},
  "keywords": ["resnet", "webassembly", "wasm", "simd", "image-classification", "deep-learning"]
}}
"#
    );
    write(&pkg.join("package.json"), &package_json)?;
    let out_s = out.display().to_string();
    let status = Command::new("npm")
        .args(["pack", "--pack-destination", &out_s])
        .current_dir(&pkg)
        .status()
        .map_err(|e| format!("cannot start npm (Node >= 20 with npm is needed): {e}"))?;
    if !status.success() {
        return Err(format!("npm pack failed with {status}"));
    }
    let tarball = out.join(format!("resnet-wasm-{version}.tgz"));
    let size = std::fs::metadata(&wasm_file).map_err(|e| e.to_string())?.len();
    let gz = gzipped_size(&wasm_file).map_or("?".to_string(), |n| n.to_string());
    eprintln!(
        "xtask: resnet_wasm_bg.wasm: {size} bytes ({gz} gzipped){}",
        if size != before {
            format!(", {before} before wasm-opt")
        } else {
            String::new()
        }
    );
    eprintln!("xtask: package {} -> {}", pkg.display(), tarball.display());
    Ok(tarball)
}

/// The tests' own package: the npm package of `wasm()` with the module built with the
/// feature `test-hooks` (`Model.create('panic-for-tests')` panics), so that the Node tests
/// can check what a panic does to an instance. Written to `<target>/wasm-pkg-test/` and
/// packed there; returns the tarball. Never published.
fn wasm_test_package() -> Result<PathBuf, String> {
    let built = cargo_build_wasm("+simd128", &["test-hooks"], None)?;
    let shipped = target_dir().join("wasm-pkg").join("package");
    let out = target_dir().join("wasm-pkg-test");
    let pkg = out.join("package");
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| format!("cannot clear {}: {e}", out.display()))?;
    }
    std::fs::create_dir_all(&pkg).map_err(|e| format!("cannot create {}: {e}", pkg.display()))?;
    for entry in std::fs::read_dir(&shipped).map_err(|e| format!("cannot read {}: {e}", shipped.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        if entry.path().is_file() {
            copy(&entry.path(), &pkg.join(entry.file_name()))?;
        }
    }
    bindgen(&built, &pkg)?;
    // One module under both names, whichever `init` picks.
    copy(
        &pkg.join("resnet_wasm_bg.wasm"),
        &pkg.join("resnet_wasm_relaxed_bg.wasm"),
    )?;
    let out_s = out.display().to_string();
    let status = Command::new("npm")
        .args(["pack", "--silent", "--pack-destination", &out_s])
        .current_dir(&pkg)
        .status()
        .map_err(|e| format!("cannot start npm: {e}"))?;
    if !status.success() {
        return Err(format!("npm pack of the test package failed with {status}"));
    }
    Ok(out.join(format!("resnet-wasm-{}.tgz", env!("CARGO_PKG_VERSION"))))
}

/// The native CLI that `cargo test --workspace` builds (test profile) for its integration
/// tests: the full test run hands it to the Node and browser tests rather than building
/// the CLI again in release mode (about 3 minutes on a 2-core machine).
fn tested_cli() -> Result<PathBuf, String> {
    let bin = target_dir().join("debug").join("resnet");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!("cargo test should have built the CLI at {}", bin.display()))
    }
}

/// The native CLI built in release mode, for `cargo xtask node-test` on its own.
fn release_cli() -> Result<PathBuf, String> {
    run("cargo", &["build", "--release", "-p", "resnet", "--bin", "resnet"])?;
    Ok(target_dir().join("release").join("resnet"))
}

/// The Node tests of the package: they install `tarball` in a fresh project and compare
/// with the native CLI `bin`; `test_tarball` is the tests' own build (`wasm_test_package`).
fn node_tests(tarball: &Path, test_tarball: &Path, bin: &Path) -> Result<(), String> {
    match version_of("node") {
        Some(v)
            if v.trim_start_matches('v')
                .split('.')
                .next()
                .and_then(|m| m.parse::<u32>().ok())
                >= Some(20) => {}
        other => return Err(format!("the wasm tests need Node >= 20, found {other:?}")),
    }
    node_test(
        "wasm/tests-node/",
        &[
            ("RESNET_WASM_TARBALL", tarball),
            ("RESNET_WASM_TEST_TARBALL", test_tarball),
            ("RESNET_BIN", bin),
        ],
    )
}

/// Runs `node --test DIR` from the workspace root with extra environment variables.
fn node_test(dir: &str, env: &[(&str, &Path)]) -> Result<(), String> {
    eprintln!("xtask: running node --test {dir}");
    let mut cmd = Command::new("node");
    cmd.args(["--test", "--test-concurrency=1", dir])
        .current_dir(workspace_root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd.status().map_err(|e| format!("cannot start node: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`node --test {dir}` failed with {status}"))
    }
}

/// Copies the built npm package into `web/pkg/`, where the page imports it from.
fn web_package() -> Result<PathBuf, String> {
    let from = target_dir().join("wasm-pkg").join("package");
    let to = workspace_root().join("web").join("pkg");
    if to.exists() {
        std::fs::remove_dir_all(&to).map_err(|e| format!("cannot clear {}: {e}", to.display()))?;
    }
    copy_tree(&from, &to)?;
    Ok(to)
}

/// Copies the files under `from` into `to`, folders included.
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    for entry in std::fs::read_dir(from).map_err(|e| format!("cannot read {}: {e}", from.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let Some(name) = path.file_name() else { continue };
        if path.is_dir() {
            copy_tree(&path, &to.join(name))?;
        } else if path.is_file() {
            copy(&path, &to.join(name))?;
        }
    }
    Ok(())
}

/// Debian's Chromium, installed with apt when missing (the tests run as root).
fn ensure_chromium() -> Result<String, String> {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
    if Path::new(&path).exists() {
        return Ok(path);
    }
    ensure_debian_packages(&["chromium"], "the browser tests")?;
    if !Path::new(&path).exists() {
        return Err(format!(
            "the Debian package chromium is installed, but the browser tests need {path}"
        ));
    }
    Ok(path)
}

/// The page's Playwright tests in Chromium (`web/tests/`), installing playwright-core
/// from npm into `web/tests/node_modules` when missing; `bin` is the native CLI.
fn browser_tests(bin: &Path) -> Result<(), String> {
    let chromium = ensure_chromium()?;
    let tests = workspace_root().join("web").join("tests");
    if !tests.join("node_modules").join("playwright-core").exists() {
        eprintln!("xtask: installing playwright-core for the browser tests");
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&tests)
            .status()
            .map_err(|e| format!("cannot start npm: {e}"))?;
        if !status.success() {
            return Err(format!("npm install in web/tests failed with {status}"));
        }
    }
    node_test("web/tests/", &[("RESNET_BIN", bin), ("CHROMIUM", Path::new(&chromium))])
}

/// Builds the page and serves `web/` on 127.0.0.1 until interrupted.
fn web(port: Option<&str>, isolated: bool) -> Result<(), String> {
    wasm()?;
    web_package()?;
    let port: u16 = port
        .unwrap_or("8000")
        .parse()
        .map_err(|_| "the port must be a number".to_string())?;
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mode = if isolated {
        ", cross-origin isolated (COOP/COEP)"
    } else {
        ""
    };
    println!("serving web/ on http://{addr}/{mode} (Ctrl-C to stop)");
    let root = workspace_root().join("web");
    for stream in listener.incoming().flatten() {
        let root = root.clone();
        std::thread::spawn(move || serve_one(stream, &root, isolated));
    }
    Ok(())
}

/// Answers one HTTP/1.1 GET with a file under `root` (no directory listing, no `..`);
/// `isolated` adds the headers of a cross-origin-isolated page.
fn serve_one(mut stream: std::net::TcpStream, root: &Path, isolated: bool) {
    use std::io::{BufRead, BufReader, Write};
    let mut line = String::new();
    let Ok(clone) = stream.try_clone() else { return };
    let mut reader = BufReader::new(clone);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Drain the headers.
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/");
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() || rel.ends_with('/') {
        format!("{rel}index.html")
    } else {
        rel.to_string()
    };
    let safe = !rel.split('/').any(|c| c == ".." || c.contains('\\'));
    let file = root.join(&rel);
    let (status, body, kind) = match (safe, std::fs::read(&file)) {
        (true, Ok(b)) => ("200 OK", b, content_type(&rel)),
        _ => ("404 Not Found", b"not found".to_vec(), "text/plain"),
    };
    let isolation = if isolated {
        "cross-origin-opener-policy: same-origin\r\ncross-origin-embedder-policy: require-corp\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n{isolation}connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(&body));
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript",
        "css" => "text/css",
        "wasm" => "application/wasm",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}
