//! File writes that never leave a half-written file behind.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`.
/// On any failure the temporary file is removed (a full disk is not kept full by it)
/// and the error names `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] with the contents written by `fill`.
fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        fill(&mut f)?;
        f.sync_all()
    });
    let result = written.and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        std::io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()))
    })
}

/// The temporary file beside `path` that [`write_atomic`] writes first.
fn temp_path(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{name}.tmp-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("resnet-fsutil-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_failed_write_removes_its_temporary_file_and_names_the_path() {
        let d = dir("fail");
        let path = d.join("checkpoint.safetensors");
        std::fs::write(&path, b"old").unwrap();
        // Fails half-way, as a full disk does.
        let err = write_atomic_with(&path, |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::other("No space left on device"))
        })
        .unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        assert!(!temp_path(&path).exists(), "the temporary file was left behind");
        assert_eq!(std::fs::read(&path).unwrap(), b"old", "the old file was touched");
        // The rename fails (the target is a folder that is not empty).
        let folder = d.join("taken");
        std::fs::create_dir_all(folder.join("x")).unwrap();
        let err = write_atomic(&folder, b"new").unwrap_err();
        assert!(err.to_string().contains("taken"), "{err}");
        assert!(!temp_path(&folder).exists());
        // The folder does not exist: the error names the file.
        let err = write_atomic(&d.join("absent/f.json"), b"{}").unwrap_err();
        assert!(err.to_string().contains("absent/f.json"), "{err}");
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
