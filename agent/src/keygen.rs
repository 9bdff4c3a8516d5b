//! `nexus-agent keygen`: a new Ed25519 key pair on disk.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use nexus_policies::SecretKey;
use zeroize::Zeroizing;

/// Writes `out` (secret, 0600) and `out.pub`; returns the public key's text form.
pub fn keygen(out: &Path, force: bool) -> anyhow::Result<String> {
    let public_path = public_path(out);
    if !force {
        for path in [out, public_path.as_path()] {
            if path.exists() {
                bail!(
                    "{} already exists; pass --force to replace it",
                    path.display()
                );
            }
        }
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let key = loop {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut *seed)
            .map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
        // A weak key from 32 random bytes is practically impossible; draw again if so.
        if let Ok(key) = SecretKey::from_seed(&seed) {
            break key;
        }
    };
    write_atomically(out, key.to_file_text().as_bytes(), 0o600)?;
    let public = key.public().to_string();
    write_atomically(&public_path, format!("{public}\n").as_bytes(), 0o644)?;
    Ok(public)
}

/// `PATH.pub`.
pub fn public_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// [`nexus_federation::fsutil::write_atomically`], with the path in the error.
pub(crate) fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    nexus_federation::fsutil::write_atomically(path, contents, mode)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Reads a node's secret key file, saying which file and how to fix it on failure.
pub fn load_secret(path: &Path) -> anyhow::Result<SecretKey> {
    let text = Zeroizing::new(fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the node key {} (create it with `nexus-agent keygen --out {}`)",
            path.display(),
            path.display()
        )
    })?);
    SecretKey::parse(&text)
        .with_context(|| format!("{} is not a nexus-agent secret key file", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn keygen_writes_a_0600_secret_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("keys/node.key");
        let public = keygen(&out, false).expect("keygen");
        let mode = fs::metadata(&out)
            .expect("secret exists")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            load_secret(&out).expect("loads").public().to_string(),
            public
        );
        assert_eq!(
            fs::read_to_string(public_path(&out)).expect("pub").trim(),
            public
        );
        let refused = keygen(&out, false).expect_err("must not overwrite");
        assert!(refused.to_string().contains("--force"), "{refused}");
        let replaced = keygen(&out, true).expect("force");
        assert_ne!(replaced, public);
    }
}
