//! Small file-system helpers shared by the agent's writers of keys, tokens and lists.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` so that a crash leaves either the old file or the new one,
/// never a torn one: a temp file beside it with exactly `mode` (the umask cannot widen or
/// narrow it), fsynced, renamed into place, and the directory fsynced. Creates the parent
/// directory if needed.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = dir {
        // The rename itself is durable only once the directory is.
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_with_the_exact_mode_and_replaces_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/secret");
        write_atomically(&path, b"one", 0o600).expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"one");
        assert_eq!(
            fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        write_atomically(&path, b"two", 0o644).expect("replace");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert!(!dir.path().join("sub/secret.tmp").exists());
    }
}
