//! Taking artifacts out of the store: a tar stream of a stored tree, and the
//! careful unpacking of such a stream into a user's directory.
//!
//! The same two functions serve `sluice artifacts get` locally (pack and unpack
//! in one process) and through the server (pack in the handler, unpack in the
//! client), so both give the same tree: bytes, executable bits and symlinks.
//! Stored artifacts are read-only on disk; the tar carries ordinary modes
//! (0755 for executables and directories, 0644 otherwise) so the user's copy is
//! writable and keeps the executable bit.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::artifact::{ArtifactInfo, ArtifactStore, digest_tree};

const DIR_MODE: u32 = 0o755;
const EXECUTABLE_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;

/// The stored directory of artifact `name`, after checking that its content
/// still has the digest it was recorded with (a stored file edited on disk
/// must not be handed out under the old digest).
pub fn verified_path(store: &ArtifactStore, name: &str, digest: &str) -> anyhow::Result<PathBuf> {
    let path = store.path_of(digest);
    if !path.is_dir() {
        bail!(
            "artifact `{name}` (blake3:{}) is no longer in the artifact store",
            short(digest)
        );
    }
    let content = digest_tree(&path).with_context(|| format!("reading artifact `{name}`"))?;
    if content.digest != digest {
        bail!(
            "artifact `{name}` is corrupt: stored digest {digest}, content digest {}",
            content.digest
        );
    }
    Ok(path)
}

/// The first 16 hex digits of a digest, as `sluice` prints digests for people.
pub fn short(digest: &str) -> &str {
    &digest[..16.min(digest.len())]
}

/// Write `dir` as a tar stream: directories, regular files and symlinks, in
/// sorted order, with ordinary modes. Anything else (a fifo, a device) is refused.
pub fn pack(dir: &Path, out: impl Write) -> anyhow::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let walker = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    for entry in walker {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let relative = entry.path().strip_prefix(dir)?;
        let metadata = entry.metadata()?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(mtime(&metadata));
        let kind = entry.file_type();
        if kind.is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder.append_link(&mut header, relative, &target)?;
        } else if kind.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(DIR_MODE);
            header.set_size(0);
            builder.append_data(&mut header, relative, std::io::empty())?;
        } else if kind.is_file() {
            let executable = metadata.permissions().mode() & 0o111 != 0;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if executable {
                EXECUTABLE_MODE
            } else {
                FILE_MODE
            });
            header.set_size(metadata.len());
            let file = std::fs::File::open(entry.path())
                .with_context(|| format!("opening {}", entry.path().display()))?;
            builder.append_data(&mut header, relative, file)?;
        } else {
            bail!(
                "`{}` is neither a file, a directory nor a symlink",
                relative.display()
            );
        }
    }
    builder.into_inner()?.flush()?;
    Ok(())
}

fn mtime(metadata: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    metadata.mtime().max(0) as u64
}

/// Unpack a tar stream (as [`pack`] writes it) into `dest`, which must not
/// exist or be an empty directory. The tree is built beside `dest` and renamed
/// into place only once it is complete and, when `expected` is given, has that
/// digest; on any error nothing is left behind.
pub fn unpack_new(
    input: impl Read,
    dest: &Path,
    expected: Option<&str>,
) -> anyhow::Result<ArtifactInfo> {
    check_destination(dest)?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(".sluice-partial-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let result = unpack_into(input, &staging)
        .and_then(|()| check_digest(&staging, expected))
        .and_then(|info| {
            std::fs::rename(&staging, dest)
                .with_context(|| format!("moving the artifact into {}", dest.display()))?;
            Ok(info)
        });
    if result.is_err() {
        std::fs::remove_dir_all(&staging).ok();
    }
    result
}

/// Copy a stored tree into `dest` through the same tar stream the server
/// sends, so a local `get` and a download give the same tree. Packing runs on
/// a thread, handing chunks over a bounded channel: memory stays flat.
pub fn copy_out(stored: &Path, dest: &Path, expected: &str) -> anyhow::Result<ArtifactInfo> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    let source = stored.to_path_buf();
    let packer = std::thread::spawn(move || {
        let writer = std::io::BufWriter::with_capacity(64 * 1024, ChunkWriter(sender));
        pack(&source, writer)
    });
    let reader = ChunkReader {
        receiver,
        chunk: Vec::new(),
        at: 0,
    };
    let unpacked = unpack_new(reader, dest, Some(expected));
    let packed = packer
        .join()
        .map_err(|_| anyhow::anyhow!("packing the artifact panicked"))?;
    match (unpacked, packed) {
        (Ok(info), Ok(())) => Ok(info),
        (Ok(_), Err(packing)) => Err(packing),
        (Err(unpacking), Ok(())) => Err(unpacking),
        // When unpacking stopped first, the packer only saw its reader go away.
        (Err(unpacking), Err(packing)) if is_broken_pipe(&packing) => Err(unpacking),
        (Err(_), Err(packing)) => Err(packing),
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The writing half of [`copy_out`]'s channel.
struct ChunkWriter(std::sync::mpsc::SyncSender<Vec<u8>>);

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "reader went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The reading half of [`copy_out`]'s channel; ends when the writer is dropped.
struct ChunkReader {
    receiver: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.receiver.recv() {
                Ok(chunk) => (self.chunk, self.at) = (chunk, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// `dest` may be absent or an empty directory; anything else is refused, so a
/// download never mixes with (or overwrites) what is already there.
fn check_destination(dest: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking {}", dest.display())),
        Ok(m) if m.is_dir() => {
            let empty = std::fs::read_dir(dest)?.next().is_none();
            anyhow::ensure!(
                empty,
                "`{}` already exists and is not empty; remove it or choose another directory with --to",
                dest.display()
            );
            Ok(())
        }
        Ok(_) => bail!(
            "`{}` already exists and is not a directory; choose another directory with --to",
            dest.display()
        ),
    }
}

fn check_digest(dir: &Path, expected: Option<&str>) -> anyhow::Result<ArtifactInfo> {
    let info = digest_tree(dir)?;
    if let Some(expected) = expected
        && info.digest != expected
    {
        bail!(
            "the downloaded copy does not match the artifact: expected digest {expected}, got {}",
            info.digest
        );
    }
    Ok(info)
}

/// Unpack into the existing, empty directory `root`. Every path must be
/// relative without `..`; nothing is written through a symlink (parents are
/// checked, files are created with O_NOFOLLOW and O_EXCL); symlinks must point
/// inside the tree; only directories, regular files and symlinks are accepted.
pub fn unpack_into(input: impl Read, root: &Path) -> anyhow::Result<()> {
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries().context("reading the artifact stream")? {
        let mut entry = entry.context("reading the artifact stream")?;
        let raw = entry.path()?.into_owned();
        let relative = safe_relative(&raw)?;
        if relative.as_os_str().is_empty() {
            continue;
        }
        make_parents(root, &relative)?;
        let target = root.join(&relative);
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => make_dir(&target, &relative)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let executable = entry.header().mode()? & 0o111 != 0;
                write_file(&mut entry, &target, &relative, executable)?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()?
                    .with_context(|| format!("symlink `{}` has no target", relative.display()))?
                    .into_owned();
                check_link_inside(&relative, &link)?;
                std::os::unix::fs::symlink(&link, &target)
                    .with_context(|| format!("creating symlink `{}`", relative.display()))?;
            }
            other => bail!(
                "`{}` is a {other:?} entry; artifacts hold only files, directories and symlinks",
                relative.display()
            ),
        }
    }
    Ok(())
}

/// The path as plain relative components; `..`, absolute paths and prefixes are refused.
fn safe_relative(path: &Path) -> anyhow::Result<PathBuf> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                bail!(
                    "refusing `{}`: a path in an artifact must stay inside it",
                    path.display()
                )
            }
        }
    }
    Ok(clean)
}

/// Create missing parent directories of `relative`, refusing any parent that
/// is a symlink or not a directory (so nothing is written through a link).
fn make_parents(root: &Path, relative: &Path) -> anyhow::Result<()> {
    let mut current = root.to_path_buf();
    let mut shown = PathBuf::new();
    let parents: Vec<_> = relative
        .parent()
        .into_iter()
        .flat_map(Path::components)
        .collect();
    for component in parents {
        current.push(component);
        shown.push(component);
        match std::fs::symlink_metadata(&current) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "refusing to write below `{}`: it is not a directory (a symlink?)",
                shown.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                make_dir(&current, &shown)?;
            }
            Err(e) => return Err(e).with_context(|| format!("checking {}", current.display())),
        }
    }
    Ok(())
}

fn make_dir(path: &Path, shown: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("`{}` appears twice in the artifact", shown.display()),
        Err(_) => std::fs::create_dir(path)
            .with_context(|| format!("creating directory `{}`", shown.display()))?,
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIR_MODE))?;
    Ok(())
}

fn write_file(
    content: &mut impl Read,
    path: &Path,
    shown: &Path,
    executable: bool,
) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(FILE_MODE)
        .open(path)
        .with_context(|| format!("creating `{}` (does it appear twice?)", shown.display()))?;
    std::io::copy(content, &mut file).with_context(|| format!("writing `{}`", shown.display()))?;
    let mode = if executable {
        EXECUTABLE_MODE
    } else {
        FILE_MODE
    };
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// A symlink at `at` (relative to the tree) must resolve, lexically, inside the tree.
fn check_link_inside(at: &Path, link: &Path) -> anyhow::Result<()> {
    let mut depth: usize = at.components().count().saturating_sub(1);
    for component in link.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            _ => bail!(
                "refusing symlink `{}` → `{}`: it points outside the artifact",
                at.display(),
                link.display()
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    /// A stored-looking tree: nested dirs, an executable, a relative symlink,
    /// everything read-only as in the store.
    fn sample(root: &Path) {
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("lib/deep/er")).unwrap();
        std::fs::write(root.join("bin/tool"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(
            root.join("bin/tool"),
            std::fs::Permissions::from_mode(0o555),
        )
        .unwrap();
        std::fs::write(root.join("lib/deep/er/data.txt"), "data").unwrap();
        std::fs::set_permissions(
            root.join("lib/deep/er/data.txt"),
            std::fs::Permissions::from_mode(0o444),
        )
        .unwrap();
        symlink("../bin/tool", root.join("lib/tool")).unwrap();
        std::fs::write(root.join("empty"), "").unwrap();
    }

    #[test]
    fn pack_then_unpack_gives_the_same_tree_with_writable_modes() {
        let temp = tempfile::tempdir().unwrap();
        let source = temp.path().join("source");
        sample(&source);
        let before = digest_tree(&source).unwrap();
        let mut tar = Vec::new();
        pack(&source, &mut tar).unwrap();
        let dest = temp.path().join("copy");
        let after = unpack_new(tar.as_slice(), &dest, Some(&before.digest)).unwrap();
        assert_eq!(after, before);
        assert_eq!(digest_tree(&dest).unwrap(), before);
        assert_eq!(mode(&dest.join("bin/tool")), 0o755);
        assert_eq!(mode(&dest.join("lib/deep/er/data.txt")), 0o644);
        assert_eq!(
            std::fs::read_link(dest.join("lib/tool")).unwrap(),
            Path::new("../bin/tool")
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("lib/tool")).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        let leftovers: Vec<_> = std::fs::read_dir(temp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }

    #[test]
    fn a_non_empty_destination_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let source = temp.path().join("source");
        sample(&source);
        let mut tar = Vec::new();
        pack(&source, &mut tar).unwrap();
        let dest = temp.path().join("busy");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("mine"), "keep").unwrap();
        let error = unpack_new(tar.as_slice(), &dest, None).unwrap_err();
        assert!(error.to_string().contains("not empty"), "{error:#}");
        assert_eq!(std::fs::read_to_string(dest.join("mine")).unwrap(), "keep");
        // An empty existing directory is fine.
        let empty = temp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        unpack_new(tar.as_slice(), &empty, None).unwrap();
        assert!(empty.join("bin/tool").is_file());
    }

    fn hostile_tar(build: impl FnOnce(&mut tar::Builder<&mut Vec<u8>>)) -> Vec<u8> {
        let mut bytes = Vec::new();
        {
            let mut builder = tar::Builder::new(&mut bytes);
            build(&mut builder);
            builder.finish().unwrap();
        }
        bytes
    }

    fn file_header(size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(size);
        header
    }

    /// Write a raw path into a header, bypassing the tar crate's own checks.
    fn raw_path(header: &mut tar::Header, path: &str) {
        let name = &mut header.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
    }

    #[test]
    fn unpacking_never_writes_outside_the_destination() {
        let temp = tempfile::tempdir().unwrap();
        let outside = temp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "dotdot",
                hostile_tar(|b| {
                    let mut h = file_header(1);
                    raw_path(&mut h, "../outside/evil");
                    b.append(&h, &b"x"[..]).unwrap();
                }),
            ),
            (
                "absolute",
                hostile_tar(|b| {
                    let mut h = file_header(1);
                    let path = format!("{}/evil", outside.display());
                    raw_path(&mut h, &path);
                    b.append(&h, &b"x"[..]).unwrap();
                }),
            ),
            (
                "through a symlink",
                hostile_tar(|b| {
                    let mut link = tar::Header::new_gnu();
                    link.set_entry_type(tar::EntryType::Symlink);
                    link.set_size(0);
                    b.append_link(&mut link, "sneaky", "sub").unwrap();
                    // `sneaky` points inside, but a second entry replaces what it
                    // resolves through; the write below it must still be refused.
                    let mut h = file_header(1);
                    b.append_data(&mut h, "sneaky/evil", &b"x"[..]).unwrap();
                }),
            ),
            (
                "escaping symlink",
                hostile_tar(|b| {
                    let mut link = tar::Header::new_gnu();
                    link.set_entry_type(tar::EntryType::Symlink);
                    link.set_size(0);
                    b.append_link(&mut link, "up", &outside).unwrap();
                }),
            ),
        ];
        for (name, tar) in cases {
            let dest = temp.path().join(format!("dest-{}", name.replace(' ', "-")));
            let error = unpack_new(tar.as_slice(), &dest, None).unwrap_err();
            assert!(error.to_string().contains("refusing"), "{name}: {error:#}");
            assert!(!dest.exists(), "{name}: a partial tree was left");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn a_stored_artifact_edited_on_disk_is_reported_corrupt() {
        let temp = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(&temp.path().join("store")).unwrap();
        let out = temp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("a.txt"), "original").unwrap();
        let info = store.ingest(&out).unwrap();
        assert!(verified_path(&store, "site", &info.digest).is_ok());
        let file = store.path_of(&info.digest).join("a.txt");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&file, "tampered").unwrap();
        let error = verified_path(&store, "site", &info.digest).unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "artifact `site` is corrupt: stored digest {}",
                info.digest
            )),
            "{error:#}"
        );
    }
}
