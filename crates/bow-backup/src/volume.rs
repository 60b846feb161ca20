//! Volumes' part: a service's volumes (host directories) as one tar stream — each volume a
//! top-level directory named after it — with a listing of every entry (type, size, mode,
//! owner, SHA-256 of each file's bytes) stored beside it as its own object; a restore that
//! unpacks into a staging directory beside each volume and swaps the contents in only once the
//! whole stream passed its checks; a drill that unpacks into a scratch directory, compares it
//! with the listing and runs the service's own `check` command.
//!
//! Consistency is the caller's: bow stops the service for the time of the tar (docs/backups.md
//! says why), so no file changes while it is read; a file whose size changes anyway fails the
//! run rather than storing a torn archive.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::catalog::{Catalog, DATA, Manifest, Verification};
use crate::error::{BackupError, Result};
use crate::stream;

pub const KIND_VOLUMES: &str = "volumes-tar";
/// The listing of every entry of the tar, one JSON object a line.
pub const FILES: &str = "files.zst.age";

/// A volume to back up or restore: its name in bow.yaml and its directory on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub path: PathBuf,
}

/// One entry of the tar, as the listing records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// `<volume>/<path inside it>`; the volume's own directory is `<volume>`.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    #[serde(default)]
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// Tars `sources` into backup `manifest.id` of `catalog` (the data, then the listing), and
/// writes the manifest last. On any failure what was written is deleted.
pub async fn backup(
    catalog: &Catalog,
    recipients: Arc<Vec<age::x25519::Recipient>>,
    sources: Vec<Source>,
    mut manifest: Manifest,
) -> Result<Manifest> {
    let began = Instant::now();
    manifest.started = crate::now_rfc3339();
    let result = tar_into(catalog, recipients.clone(), sources, &mut manifest).await;
    crate::postgres::finish(catalog, &recipients, manifest, began, result).await
}

async fn tar_into(
    catalog: &Catalog,
    recipients: Arc<Vec<age::x25519::Recipient>>,
    sources: Vec<Source>,
    manifest: &mut Manifest,
) -> Result<()> {
    let (reader, writer) = std::io::pipe().map_err(|e| BackupError::io("a pipe", e))?;
    let names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
    let tarring = std::thread::spawn(move || write_tar(&sources, writer));
    let uploaded = stream::upload(
        catalog.store.clone(),
        &catalog.path(&manifest.id, DATA),
        recipients.clone(),
        reader,
    )
    .await;
    let listing = tarring
        .join()
        .map_err(|_| BackupError::Tool("the tar thread failed".into()))?;
    let mut record = uploaded?;
    let listing = listing?;
    record.name = DATA.to_string();
    let mut lines = Vec::new();
    for entry in &listing {
        serde_json::to_writer(&mut lines, entry)
            .map_err(|e| BackupError::Invalid(e.to_string()))?;
        lines.push(b'\n');
    }
    let mut files = stream::upload(
        catalog.store.clone(),
        &catalog.path(&manifest.id, FILES),
        recipients,
        std::io::Cursor::new(lines),
    )
    .await?;
    files.name = FILES.to_string();
    manifest.objects = vec![record, files];
    manifest.volumes = names
        .iter()
        .map(|name| {
            let mine = listing
                .iter()
                .filter(|e| e.path == *name || e.path.starts_with(&format!("{name}/")));
            let (mut files, mut bytes) = (0u64, 0u64);
            for entry in mine.filter(|e| e.kind == "file") {
                files += 1;
                bytes += entry.size;
            }
            crate::catalog::VolumeRecord {
                name: name.clone(),
                files,
                bytes,
            }
        })
        .collect();
    Ok(())
}

/// Writes every source as a tar into `out`; the listing of what it wrote.
fn write_tar(sources: &[Source], out: impl Write) -> Result<Vec<FileRecord>> {
    let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, out));
    builder.follow_symlinks(false);
    let mut listing = Vec::new();
    for source in sources {
        let metadata = std::fs::symlink_metadata(&source.path).map_err(|e| {
            BackupError::io(
                format!("the volume {} ({})", source.name, source.path.display()),
                e,
            )
        })?;
        if !metadata.is_dir() {
            return Err(BackupError::Invalid(format!(
                "the volume {} ({}) is not a directory",
                source.name,
                source.path.display()
            )));
        }
        append(
            &mut builder,
            &source.path,
            &source.name,
            &metadata,
            &mut listing,
        )?;
    }
    builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| BackupError::io("writing the tar", e))?;
    Ok(listing)
}

fn append(
    builder: &mut tar::Builder<impl Write>,
    path: &Path,
    name: &str,
    metadata: &std::fs::Metadata,
    listing: &mut Vec<FileRecord>,
) -> Result<()> {
    let fail = |e: std::io::Error| BackupError::io(format!("{}", path.display()), e);
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(metadata, tar::HeaderMode::Complete);
    let mut record = FileRecord {
        path: name.to_string(),
        kind: String::new(),
        size: 0,
        mode: metadata.mode() & 0o7777,
        uid: metadata.uid(),
        gid: metadata.gid(),
        sha256: None,
        link: None,
    };
    let kind = metadata.file_type();
    if kind.is_dir() {
        record.kind = "dir".into();
        header.set_size(0);
        builder
            .append_data(&mut header, name, std::io::empty())
            .map_err(fail)?;
        listing.push(record);
        let mut children: Vec<_> = std::fs::read_dir(path)
            .map_err(fail)?
            .collect::<std::io::Result<_>>()
            .map_err(fail)?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let child_name = format!("{name}/{}", child.file_name().to_string_lossy());
            let child_metadata = std::fs::symlink_metadata(child.path()).map_err(fail)?;
            append(
                builder,
                &child.path(),
                &child_name,
                &child_metadata,
                listing,
            )?;
        }
    } else if kind.is_symlink() {
        let target = std::fs::read_link(path).map_err(fail)?;
        record.kind = "symlink".into();
        record.link = Some(target.to_string_lossy().into_owned());
        header.set_size(0);
        builder
            .append_link(&mut header, name, &target)
            .map_err(fail)?;
        listing.push(record);
    } else if kind.is_file() {
        let file = std::fs::File::open(path).map_err(fail)?;
        let size = metadata.len();
        let mut hashing = Hashing {
            inner: file.take(size),
            hasher: Sha256::new(),
            read: 0,
        };
        builder
            .append_data(&mut header, name, &mut hashing)
            .map_err(fail)?;
        if hashing.read != size {
            return Err(BackupError::Integrity(format!(
                "{} changed while it was read ({size} bytes, then {}): nothing is stored from a torn copy",
                path.display(),
                hashing.read
            )));
        }
        record.kind = "file".into();
        record.size = size;
        record.sha256 = Some(hex::encode(hashing.hasher.finalize()));
        listing.push(record);
    }
    // Sockets, fifos and devices are not data: left out.
    Ok(())
}

/// A reader that hashes and counts what passes through.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Streams backup `manifest`'s tar into `roots`: each volume's entries under
/// `roots[volume]/<volume>/`. `Ok` only when the whole object passed its size and SHA-256
/// check: on `Err` what was unpacked is incomplete and must be thrown away.
pub async fn unpack(
    catalog: &Catalog,
    identity: Arc<age::x25519::Identity>,
    manifest: &Manifest,
    roots: BTreeMap<String, PathBuf>,
) -> Result<()> {
    if manifest.kind != KIND_VOLUMES {
        return Err(BackupError::Invalid(format!(
            "backup {} is a {} backup, not one of volumes",
            manifest.id, manifest.kind
        )));
    }
    let record = manifest.object(DATA)?.clone();
    let (reader, writer) = std::io::pipe().map_err(|e| BackupError::io("a pipe", e))?;
    let unpacking = std::thread::spawn(move || unpack_tar(reader, &roots));
    let streamed = stream::download(
        catalog.store.clone(),
        &catalog.path(&manifest.id, DATA),
        identity,
        record,
        writer,
    )
    .await
    .map(|(_, writer)| drop(writer));
    let unpacked = unpacking
        .join()
        .map_err(|_| BackupError::Tool("the unpacking thread failed".into()))?;
    streamed?;
    unpacked
}

fn unpack_tar(reader: impl Read, roots: &BTreeMap<String, PathBuf>) -> Result<()> {
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, reader));
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    let entries = archive
        .entries()
        .map_err(|e| BackupError::io("reading the tar", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| BackupError::Integrity(format!("the tar: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| BackupError::Integrity(format!("the tar: {e}")))?
            .into_owned();
        let volume = path
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(root) = roots.get(&volume) else {
            return Err(BackupError::Integrity(format!(
                "the tar holds {} of no volume being restored",
                path.display()
            )));
        };
        let unpacked = entry
            .unpack_in(root)
            .map_err(|e| BackupError::io(format!("unpacking {}", path.display()), e))?;
        if !unpacked {
            return Err(BackupError::Integrity(format!(
                "the tar holds a path outside its volume: {}",
                path.display()
            )));
        }
    }
    Ok(())
}

/// The listing stored with backup `manifest`.
pub async fn listing(
    catalog: &Catalog,
    identity: Arc<age::x25519::Identity>,
    manifest: &Manifest,
) -> Result<Vec<FileRecord>> {
    let record = manifest.object(FILES)?.clone();
    let (_, bytes) = stream::download(
        catalog.store.clone(),
        &catalog.path(&manifest.id, FILES),
        identity,
        record,
        Vec::new(),
    )
    .await?;
    bytes
        .lines()
        .filter(|line| line.as_ref().is_ok_and(|l| !l.is_empty()))
        .map(|line| {
            let line = line.map_err(|e| BackupError::io("the listing", e))?;
            serde_json::from_str(&line)
                .map_err(|e| BackupError::Integrity(format!("the listing: {e}")))
        })
        .collect()
}

/// What is under `root` (`<root>/<volume>/…`), as a listing would record it, by path.
pub fn scan(root: &Path, volumes: &[String]) -> Result<BTreeMap<String, FileRecord>> {
    let mut found = BTreeMap::new();
    for volume in volumes {
        let path = root.join(volume);
        let metadata = std::fs::symlink_metadata(&path)
            .map_err(|e| BackupError::io(format!("{}", path.display()), e))?;
        scan_one(&path, volume, &metadata, &mut found)?;
    }
    Ok(found)
}

fn scan_one(
    path: &Path,
    name: &str,
    metadata: &std::fs::Metadata,
    found: &mut BTreeMap<String, FileRecord>,
) -> Result<()> {
    let fail = |e: std::io::Error| BackupError::io(format!("{}", path.display()), e);
    let mut record = FileRecord {
        path: name.to_string(),
        kind: String::new(),
        size: 0,
        mode: metadata.mode() & 0o7777,
        uid: metadata.uid(),
        gid: metadata.gid(),
        sha256: None,
        link: None,
    };
    let kind = metadata.file_type();
    if kind.is_dir() {
        record.kind = "dir".into();
        for child in std::fs::read_dir(path).map_err(fail)? {
            let child = child.map_err(fail)?;
            let child_name = format!("{name}/{}", child.file_name().to_string_lossy());
            let child_metadata = std::fs::symlink_metadata(child.path()).map_err(fail)?;
            scan_one(&child.path(), &child_name, &child_metadata, found)?;
        }
    } else if kind.is_symlink() {
        record.kind = "symlink".into();
        record.link = Some(
            std::fs::read_link(path)
                .map_err(fail)?
                .to_string_lossy()
                .into_owned(),
        );
    } else if kind.is_file() {
        record.kind = "file".into();
        record.size = metadata.len();
        let mut hasher = Sha256::new();
        std::io::copy(&mut std::fs::File::open(path).map_err(fail)?, &mut hasher).map_err(fail)?;
        record.sha256 = Some(hex::encode(hasher.finalize()));
    } else {
        return Ok(());
    }
    found.insert(name.to_string(), record);
    Ok(())
}

/// How listed and found entries differ (at most a few named), or `None`.
pub fn differences(listed: &[FileRecord], found: &BTreeMap<String, FileRecord>) -> Option<String> {
    let mut problems = Vec::new();
    for entry in listed {
        match found.get(&entry.path) {
            None => problems.push(format!("{} missing", entry.path)),
            Some(seen) if seen.kind != entry.kind => problems.push(format!(
                "{} is a {}, not a {}",
                entry.path, seen.kind, entry.kind
            )),
            Some(seen) if seen.sha256 != entry.sha256 || seen.size != entry.size => {
                problems.push(format!(
                    "{}: {} bytes restored, {} backed up, or other bytes",
                    entry.path, seen.size, entry.size
                ))
            }
            Some(seen) if seen.link != entry.link || seen.mode != entry.mode => {
                problems.push(format!("{}: its mode or link target differs", entry.path))
            }
            Some(_) => {}
        }
    }
    let listed_paths: std::collections::BTreeSet<&str> =
        listed.iter().map(|e| e.path.as_str()).collect();
    for path in found.keys().filter(|p| !listed_paths.contains(p.as_str())) {
        problems.push(format!("{path} restored but not listed"));
    }
    if problems.is_empty() {
        return None;
    }
    let more = problems.len().saturating_sub(5);
    problems.truncate(5);
    let mut text = problems.join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    Some(text)
}

/// Replaces the contents of each volume with what `staging[volume]/<volume>` holds (renames
/// within one file system: the volume's own directory keeps its inode, so a bind mount of it
/// stays valid), then removes the staging directories.
pub fn swap_in(sources: &[Source], staging: &BTreeMap<String, PathBuf>) -> Result<()> {
    for source in sources {
        let Some(root) = staging.get(&source.name) else {
            continue;
        };
        let restored = root.join(&source.name);
        let fail = |what: &str, e: std::io::Error| BackupError::io(what.to_string(), e);
        for old in std::fs::read_dir(&source.path).map_err(|e| fail("the volume", e))? {
            let old = old.map_err(|e| fail("the volume", e))?.path();
            let removed = if old.is_dir() && !old.is_symlink() {
                std::fs::remove_dir_all(&old)
            } else {
                std::fs::remove_file(&old)
            };
            removed.map_err(|e| fail(&format!("cannot remove {}", old.display()), e))?;
        }
        if restored.exists() {
            for new in std::fs::read_dir(&restored).map_err(|e| fail("the restored copy", e))? {
                let new = new.map_err(|e| fail("the restored copy", e))?;
                std::fs::rename(new.path(), source.path.join(new.file_name())).map_err(|e| {
                    fail(
                        &format!("cannot move {} into place", new.path().display()),
                        e,
                    )
                })?;
            }
            let metadata =
                std::fs::metadata(&restored).map_err(|e| fail("the restored copy", e))?;
            let _ =
                std::os::unix::fs::chown(&source.path, Some(metadata.uid()), Some(metadata.gid()));
            let _ = std::fs::set_permissions(&source.path, metadata.permissions());
        }
        let _ = std::fs::remove_dir_all(root);
    }
    Ok(())
}

/// The staging directory of a restore of `source`: beside it, on the same file system.
pub fn staging_for(source: &Source, id: &str) -> PathBuf {
    let parent = source.path.parent().unwrap_or(Path::new("/"));
    let base = source.path.file_name().map_or_else(
        || "volume".to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    parent.join(format!(".{base}.bow-restore-{id}"))
}

/// A restore drill: the backup unpacked into `scratch` (created, then deleted), every entry
/// compared with the listing (type, size, SHA-256, mode, link), then `check` run by `sh -c`
/// in `scratch` with `BOW_RESTORED` naming it (it must exit 0).
pub async fn verify(
    catalog: &Catalog,
    identity: Arc<age::x25519::Identity>,
    manifest: &Manifest,
    scratch: &Path,
    check: Option<&str>,
) -> Result<Verification> {
    let began = Instant::now();
    let at = crate::now_rfc3339();
    std::fs::create_dir_all(scratch)
        .map_err(|e| BackupError::io(format!("cannot create {}", scratch.display()), e))?;
    let verdict = drill(catalog, identity, manifest, scratch, check).await;
    let _ = std::fs::remove_dir_all(scratch);
    let (ok, message) = match verdict {
        Ok(message) => (true, message),
        Err(error) => (false, error.to_string()),
    };
    Ok(Verification {
        at,
        ok,
        message,
        duration_ms: began.elapsed().as_millis() as u64,
    })
}

async fn drill(
    catalog: &Catalog,
    identity: Arc<age::x25519::Identity>,
    manifest: &Manifest,
    scratch: &Path,
    check: Option<&str>,
) -> Result<String> {
    let names: Vec<String> = manifest.volumes.iter().map(|v| v.name.clone()).collect();
    let roots = names
        .iter()
        .map(|n| (n.clone(), scratch.to_path_buf()))
        .collect();
    unpack(catalog, identity.clone(), manifest, roots).await?;
    let listed = listing(catalog, identity, manifest).await?;
    let (root, volumes) = (scratch.to_path_buf(), names.clone());
    let found = tokio::task::spawn_blocking(move || scan(&root, &volumes))
        .await
        .map_err(|e| BackupError::Tool(e.to_string()))??;
    if let Some(problems) = differences(&listed, &found) {
        return Err(BackupError::Integrity(format!(
            "the restored files are not the listed ones: {problems}"
        )));
    }
    if let Some(command) = check {
        let output = Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .current_dir(scratch)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("BOW_RESTORED", scratch)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| BackupError::io("cannot run backup.check", e))?;
        if !output.status.success() {
            let mut text = output.stdout.clone();
            text.extend_from_slice(&output.stderr);
            return Err(BackupError::Integrity(format!(
                "backup.check failed ({}): {}",
                output.status,
                crate::postgres::tail(&text)
            )));
        }
    }
    let files = listed.iter().filter(|e| e.kind == "file").count();
    let bytes: u64 = listed.iter().map(|e| e.size).sum();
    Ok(format!(
        "unpacked into a scratch directory; {files} files, {bytes} bytes of {} volume(s) as listed (SHA-256 of each){}",
        names.len(),
        if check.is_some() {
            "; backup.check passed"
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tar_round_trip_matches_its_listing_and_a_change_is_found() {
        let from = tempfile::tempdir().unwrap();
        let data = from.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("a.txt"), b"alpha").unwrap();
        std::fs::write(data.join("sub/b.bin"), vec![7u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("a.txt", data.join("link")).unwrap();
        let sources = vec![Source {
            name: "uploads".into(),
            path: data.clone(),
        }];
        let mut tar = Vec::new();
        let listed = write_tar(&sources, &mut tar).unwrap();
        assert_eq!(listed.iter().filter(|e| e.kind == "file").count(), 2);
        let to = tempfile::tempdir().unwrap();
        let roots = BTreeMap::from([("uploads".to_string(), to.path().to_path_buf())]);
        unpack_tar(&tar[..], &roots).unwrap();
        let found = scan(to.path(), &["uploads".to_string()]).unwrap();
        assert_eq!(differences(&listed, &found), None);
        std::fs::write(to.path().join("uploads/a.txt"), b"alphA").unwrap();
        let found = scan(to.path(), &["uploads".to_string()]).unwrap();
        let problems = differences(&listed, &found).unwrap();
        assert!(problems.contains("uploads/a.txt"), "{problems}");

        // Swapping in replaces the volume's contents and keeps its directory.
        std::fs::write(data.join("new-since"), b"x").unwrap();
        let staging = BTreeMap::from([("uploads".to_string(), to.path().to_path_buf())]);
        swap_in(&sources, &staging).unwrap();
        assert!(!data.join("new-since").exists());
        assert_eq!(std::fs::read(data.join("a.txt")).unwrap(), b"alphA");
        assert!(!to.path().exists());
    }
}
