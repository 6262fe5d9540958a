//! Writing results so that an interrupted or failed run leaves nothing half-written: files
//! are staged in a temporary directory beside the destination and moved into place at the end.
//! Every file is flushed to disk before it is moved, and the directory after, so a crash
//! (or power loss) leaves either the old file or the whole new one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The directory a path lies in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Files staged for an output directory.
pub struct StagedDir {
    dest: PathBuf,
    staging: tempfile::TempDir,
    names: Vec<String>,
}

impl StagedDir {
    /// Stages files for `dest` (created at commit if needed).
    pub fn new(dest: &Path) -> Result<StagedDir> {
        let parent = parent_dir(dest);
        fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
        let staging = tempfile::Builder::new()
            .prefix(".refusal-lens-partial-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
        Ok(StagedDir {
            dest: dest.to_path_buf(),
            staging,
            names: Vec::new(),
        })
    }

    pub fn write(&mut self, name: &str, bytes: impl AsRef<[u8]>) -> Result<()> {
        let path = self.staging.path().join(name);
        let mut file = fs::File::create(&path)
            .and_then(|mut f| f.write_all(bytes.as_ref()).map(|()| f))
            .with_context(|| format!("writing {}", path.display()))?;
        file.flush()
            .and_then(|()| file.sync_all())
            .with_context(|| format!("flushing {}", path.display()))?;
        self.names.push(name.to_owned());
        Ok(())
    }

    /// Moves every staged file into the destination directory (replacing files of the same
    /// name) and returns their final paths.
    pub fn commit(self) -> Result<Vec<PathBuf>> {
        fs::create_dir_all(&self.dest)
            .with_context(|| format!("creating {}", self.dest.display()))?;
        let mut out = Vec::with_capacity(self.names.len());
        for name in &self.names {
            let to = self.dest.join(name);
            fs::rename(self.staging.path().join(name), &to)
                .with_context(|| format!("moving {name} into {}", self.dest.display()))?;
            out.push(to);
        }
        sync_dir(&self.dest)?;
        // A destination created here is an entry of its parent.
        sync_dir(&parent_dir(&self.dest))?;
        Ok(out)
    }
}

/// Flushes a directory's entries (a rename into it, a file created in it) to disk.
///
/// # Errors
///
/// An unreadable directory or a failed flush.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("flushing the directory {}", dir.display()))
}

/// Writes one file atomically: a temporary file in the same directory, renamed into place.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut fs::File) -> Result<()>) -> Result<()> {
    let dir = parent_dir(path);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".refusal-lens-partial-");
    // Temporary files are private (0600); what we write is an ordinary output file.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let mut file = builder
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    write(file.as_file_mut())?;
    file.as_file()
        .sync_all()
        .with_context(|| format!("flushing {}", path.display()))?;
    file.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    sync_dir(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_reaches_the_destination_before_commit() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("out");
        let mut staged = StagedDir::new(&dest).unwrap();
        staged.write("a.json", "{}").unwrap();
        assert!(!dest.exists());
        drop(staged);
        assert!(!dest.exists());
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            0,
            "staging removed"
        );

        let mut staged = StagedDir::new(&dest).unwrap();
        staged.write("a.json", "{}").unwrap();
        let paths = staged.commit().unwrap();
        assert_eq!(paths, [dest.join("a.json")]);
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            1,
            "only the output remains"
        );
    }
}
