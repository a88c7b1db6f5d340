//! Writing subnet.env atomically: a temporary file in the same directory, fsync, rename.
//! Readers (the CNI plugin) see the old file or the new one, never half of either. The file
//! is 0644 whatever the umask, the directory is created 0755, as upstream (`renameio`).

use flannel_core::subnet_env::SubnetEnv;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("writing {path}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

pub fn write_atomic(path: &Path, content: &str) -> Result<(), WriteError> {
    let err = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(err)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".subnet.env.")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(content.as_bytes()).map_err(err)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

pub fn write_subnet_env(path: &Path, env: &SubnetEnv) -> Result<(), WriteError> {
    write_atomic(path, &env.render())
}

/// The previous run's subnet.env, if any (missing or unreadable → none).
pub fn read_previous(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_whole_file_with_mode_0644_and_creates_dir() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run/flannel/subnet.env");
        write_atomic(&p, "A=1\n").unwrap();
        write_atomic(&p, "FLANNEL_MTU=1500\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "FLANNEL_MTU=1500\n");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o644);
        assert_eq!(
            std::fs::metadata(p.parent().unwrap()).unwrap().mode() & 0o777,
            0o755
        );
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn unwritable_path_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, "").unwrap();
        let e = write_atomic(&file.join("subnet.env"), "x").unwrap_err();
        assert!(e.to_string().contains("subnet.env"), "{e}");
    }
}
