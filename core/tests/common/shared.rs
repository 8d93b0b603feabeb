//! Where the real data and weights are: `RESNET_SHARED`, else `../shared` beside the repo.

use std::path::PathBuf;

/// The shared folder, or `None` (with a note) outside CI when it is absent. Under CI
/// (`CI` set) a missing folder fails the test: CI always has it.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("RESNET_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")));
    if dir.join("README.md").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide the shared folder at {}",
        dir.display()
    );
    println!("skipping: no shared folder at {} (set RESNET_SHARED)", dir.display());
    None
}
