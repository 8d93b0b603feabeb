//! The threaded wasm build: `resnet-wasm` with the feature `threads` (rayon's pool on Web
//! Workers through wasm-bindgen-rayon) over a shared memory.
//!
//! Shared memory needs every object in the module compiled with `atomics` and
//! `bulk-memory`, std included, and rustup's prebuilt wasm32 std is not: std must be
//! rebuilt (`-Z build-std`) from its source. rustup's `rust-src` is not reachable from
//! where this runs, so the build uses Debian's `rustc-web` with its `rust-web-src`, both
//! from apt (bookworm has 1.85, its security updates 1.96: the build works with either),
//! `RUSTC_BOOTSTRAP=1` for the unstable `build-std`, and the crate attributes below for
//! the library features our dependencies use that 1.85 still gates. It links with
//! rustup's `rust-lld` (Debian's compiler ships no wasm linker). The single-thread builds
//! use rustup's stable toolchain as before.

use crate::{ensure_debian_packages, target_dir, workspace_root};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's Rust compiler and Cargo, and the std source `-Z build-std` compiles.
const TOOLCHAIN_PACKAGES: [&str; 3] = ["rustc-web", "cargo-web", "rust-web-src"];

/// Where the Debian packages put their compiler and Cargo.
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";

/// Library features, stable in the Rust our lock file's crates ask for (1.87-1.89) but
/// gated in 1.85, per crate that uses them. A later compiler, where they are stable,
/// only warns.
const GATED_FEATURES: [(&str, &str); 3] = [
    ("image", "slice_as_chunks,unsigned_is_multiple_of"),
    ("wide", "float_next_up_down,integer_sign_cast,unbounded_shifts"),
    ("resnet-core", "slice_as_chunks,unsigned_is_multiple_of"),
];

/// Largest memory the shared module may grow to: wasm32's 4 GiB (rustc's default for
/// shared memory is 1 GiB, less than training an ImageNet net may take).
const MAX_MEMORY_BYTES: u64 = 4 << 30;

/// What wasm-bindgen's threads need from the linker: one memory, shared and imported (each
/// Worker instantiates the module over the same memory), and the thread-local storage
/// symbols its glue calls to give each thread its own TLS block. Rust 1.85 passed these
/// itself when `atomics` was on; later compilers leave them to the build (wasm-ld accepts
/// them twice).
const SHARED_MEMORY_LINK_ARGS: &str = "-C link-arg=--shared-memory -C link-arg=--import-memory \
     -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size \
     -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base";

/// rustup's `rust-lld`, which links wasm32 for the default toolchain.
fn rustup_lld() -> Result<PathBuf, String> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let host = Command::new("rustc")
        .arg("-vV")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        })
        .ok_or("cannot read rustc's host triple from `rustc -vV`")?;
    let lld = Path::new(&sysroot).join("lib/rustlib").join(host).join("bin/rust-lld");
    if lld.exists() {
        Ok(lld)
    } else {
        Err(format!(
            "no rust-lld at {} (rustup's stable toolchain has it)",
            lld.display()
        ))
    }
}

/// Builds `resnet-wasm --features threads` with SIMD128 and shared memory under
/// `<target>/threads` and returns the path of the `.wasm`.
pub fn build() -> Result<PathBuf, String> {
    ensure_debian_packages(&TOOLCHAIN_PACKAGES, "the threaded wasm build")?;
    let version = Command::new(DEBIAN_RUSTC)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .map_err(|e| format!("cannot run {DEBIAN_RUSTC}: {e}"))?;
    eprintln!("xtask: the threaded build compiles with {DEBIAN_RUSTC}: {version}");
    let lld = rustup_lld()?;
    let flags = format!(
        "-C target-feature=+simd128,+atomics,+bulk-memory,+mutable-globals -C linker={} -C link-arg=--max-memory={MAX_MEMORY_BYTES} {SHARED_MEMORY_LINK_ARGS}",
        lld.display()
    );
    let target = target_dir().join("threads");
    let mut args: Vec<String> = [
        "build",
        "-p",
        "resnet-wasm",
        "--lib",
        "--features",
        "threads",
        "--target",
        "wasm32-unknown-unknown",
        "--release",
        "--locked",
        "--ignore-rust-version",
        "-Z",
        "build-std=panic_abort,std",
        "-Z",
        "profile-rustflags",
    ]
    .map(String::from)
    .to_vec();
    for (krate, features) in GATED_FEATURES {
        args.push("--config".into());
        args.push(format!(
            r#"profile.release.package.{krate}.rustflags=["-Zcrate-attr=feature({features})"]"#
        ));
    }
    args.push("--target-dir".into());
    args.push(target.display().to_string());
    eprintln!(
        "xtask: running RUSTFLAGS='{flags}' RUSTC={DEBIAN_RUSTC} RUSTC_BOOTSTRAP=1 {DEBIAN_CARGO} {}",
        args.join(" ")
    );
    let status = Command::new(DEBIAN_CARGO)
        .args(&args)
        .env("RUSTFLAGS", &flags)
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("cannot start {DEBIAN_CARGO}: {e}"))?;
    if !status.success() {
        return Err(format!("the threaded build of resnet-wasm failed with {status}"));
    }
    Ok(target.join("wasm32-unknown-unknown/release/resnet_wasm.wasm"))
}
