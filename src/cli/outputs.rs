//! Output paths are checked before any work starts: a known extension, a folder that exists (it
//! is created when missing) and takes a new file, and never one of the command's input files
//! (canonical paths compared), so that a long run cannot end in a lost result or an overwritten
//! input.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The inputs of one command, by flag, to keep outputs away from.
#[derive(Default)]
pub struct Inputs(Vec<(&'static str, PathBuf)>);

impl Inputs {
    pub fn add(&mut self, flag: &'static str, path: Option<&Path>) -> &mut Self {
        if let Some(p) = path {
            self.0.push((flag, p.to_path_buf()));
        }
        self
    }

    /// The file a `--prior` spec reads (parsed as the loader parses it; an unparsable spec adds
    /// nothing here and fails when the prior is loaded).
    pub fn prior(&mut self, spec: Option<&str>) -> &mut Self {
        let spec = spec.and_then(|s| s.parse::<daps::prior::spec::PriorSpec>().ok());
        self.add("--prior", spec.as_ref().map(|p| p.path()))
    }

    /// The inputs, by flag.
    pub fn paths(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        self.0.iter().map(|(f, p)| (*f, p.as_path()))
    }

    /// Fails if `out` (given as `flag`) names the same file as an input.
    fn check(&self, flag: &str, out: &Path) -> Result<()> {
        let Some(o) = canonical(out) else {
            return Ok(());
        };
        for (f, p) in &self.0 {
            if canonical(p).as_ref() == Some(&o) {
                bail!(
                    "{flag} {} is the same file as {f} {}: refusing to overwrite an input",
                    out.display(),
                    p.display()
                );
            }
        }
        Ok(())
    }
}

/// The canonical form of a path that may not exist yet: its folder canonicalised, plus its name.
fn canonical(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let name = p.file_name()?;
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(dir.canonicalize().ok()?.join(name))
}

/// Creates `dir` if missing and checks that a file can be created in it.
pub fn writable_dir(flag: &str, dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{flag}: cannot create the folder {}", dir.display()))?;
    let probe = dir.join(format!(".daps-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("{flag}: cannot write into {}", dir.display()))?;
    std::fs::remove_file(&probe).ok();
    Ok(())
}

/// Checks an output file: extension one of `exts` (case-insensitive), its folder created and
/// writable, and not an input.
pub fn file(flag: &str, out: &Path, exts: &[&str], inputs: &Inputs) -> Result<()> {
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    if !exts.iter().any(|e| Some(*e) == ext.as_deref()) {
        bail!(
            "{flag} {}: expected a .{} file",
            out.display(),
            exts.join(" or .")
        );
    }
    if out.is_dir() {
        bail!("{flag} {} is a folder, not a file", out.display());
    }
    writable_dir(flag, out.parent().unwrap_or(Path::new("")))?;
    inputs.check(flag, out)
}

/// Checks an output folder: created if missing, writable, and not an input.
pub fn dir(flag: &str, out: &Path, inputs: &Inputs) -> Result<()> {
    if out.is_file() {
        bail!("{flag} {} is a file, not a folder", out.display());
    }
    writable_dir(flag, out)?;
    inputs.check(flag, out)
}

/// Image files the tool writes.
pub const IMAGE: &[&str] = &["png", "jpg", "jpeg"];
