//! The filesystem a command user sees (run by the launcher, in the command's
//! own mount namespace, before Landlock and before dropping root).
//!
//! A command user ([`super::identity`]) cannot enter a directory that is
//! closed to others, such as `/root` (mode 0700), yet a granted toolchain
//! (`/root/.cargo`) or the data directory may live inside one. Opening the
//! directory to others would open it to every user of the host. Instead, in
//! the command's namespace only, each such closed directory is covered by an
//! empty tmpfs and the granted paths inside it are bound back at their own
//! paths: the command reaches `/root/.cargo` and nothing else of `/root`.
//!
//! `/etc` is covered the same way, with only the granted files bound back and
//! a `passwd` and `group` that name the command user (tools such as `npm` and
//! `git` look the current user up); `/etc/shadow` is not even there.

use std::ffi::CString;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::identity::SANDBOX_GROUP;

/// A granted path kept open while a cover hides it, to be bound back.
struct Reopened {
    path: PathBuf,
    fd: OwnedFd,
    is_dir: bool,
}

/// Cover `/etc` and every closed directory above a granted path, bind the
/// granted paths back, and write the user database for `uid`.
pub fn expose_only_granted(granted: &[PathBuf], uid: u32, home: &str) -> Result<(), String> {
    let granted: Vec<&PathBuf> = granted.iter().filter(|p| p.exists()).collect();
    let covers = covers(&granted, uid);
    let user_database = user_database(uid, home);
    let reopened = granted
        .iter()
        .filter(|p| covers.iter().any(|c| p.starts_with(c)))
        .filter(|p| !is_user_database(p))
        .map(|p| reopen(p))
        .collect::<Result<Vec<_>, _>>()?;
    for cover in &covers {
        mount_tmpfs(cover)?;
    }
    let mut reopened = reopened;
    reopened.sort_by_key(|r| r.path.components().count());
    for entry in &reopened {
        bind_back(entry)?;
    }
    for (file, text) in user_database {
        std::fs::write(file, text).map_err(|e| format!("writing {file}: {e}"))?;
    }
    Ok(())
}

/// `/etc`, plus the outermost closed directory above each granted path.
fn covers(granted: &[&PathBuf], uid: u32) -> Vec<PathBuf> {
    let mut covers: Vec<PathBuf> = vec![PathBuf::from("/etc")];
    for path in granted {
        let closed = path
            .ancestors()
            .skip(1)
            .filter(|a| a.parent().is_some())
            .filter(|a| !can_enter(a, uid))
            .last();
        if let Some(dir) = closed {
            covers.push(dir.to_path_buf());
        }
    }
    covers.sort();
    covers.dedup();
    // A cover inside another is already hidden by it.
    let outer = covers.clone();
    covers.retain(|c| !outer.iter().any(|o| o != c && c.starts_with(o)));
    covers
}

/// Whether `uid` (in its own group and [`SANDBOX_GROUP`]) may search `dir`.
fn can_enter(dir: &Path, uid: u32) -> bool {
    let Ok(metadata) = dir.metadata() else {
        return false;
    };
    let mode = metadata.mode();
    if metadata.uid() == uid {
        mode & 0o100 != 0
    } else if metadata.gid() == uid || metadata.gid() == SANDBOX_GROUP {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

fn is_user_database(path: &Path) -> bool {
    path == Path::new("/etc/passwd") || path == Path::new("/etc/group")
}

/// The host's users and groups, plus the command user (home: its workspace)
/// and the sandbox group; read before `/etc` is covered.
fn user_database(uid: u32, home: &str) -> [(&'static str, String); 2] {
    let read = |file: &str| std::fs::read_to_string(file).unwrap_or_default();
    let ends_line = |text: String| {
        if text.is_empty() || text.ends_with('\n') {
            text
        } else {
            text + "\n"
        }
    };
    let passwd = ends_line(read("/etc/passwd"))
        + &format!("sluice:x:{uid}:{uid}:Sluice command user:{home}:/bin/sh\n");
    let group = ends_line(read("/etc/group"))
        + &format!("sluice:x:{uid}:\nsluice-sandbox:x:{SANDBOX_GROUP}:sluice\n");
    [("/etc/passwd", passwd), ("/etc/group", group)]
}

fn reopen(path: &Path) -> Result<Reopened, String> {
    use rustix::fs::{Mode, OFlags, open};
    let fd = open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    Ok(Reopened {
        path: path.to_path_buf(),
        is_dir: path.is_dir(),
        fd,
    })
}

fn mount_tmpfs(dir: &Path) -> Result<(), String> {
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755,size=4m"),
    )
}

/// Make a mount point for `entry` in the cover, then bind the original there.
fn bind_back(entry: &Reopened) -> Result<(), String> {
    let at = &entry.path;
    let made = if entry.is_dir {
        std::fs::create_dir_all(at)
    } else {
        at.parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| match at.exists() {
                true => Ok(()),
                false => std::fs::write(at, b""),
            })
    };
    made.map_err(|e| format!("making mount point {}: {e}", at.display()))?;
    let source = format!("/proc/self/fd/{}", entry.fd.as_raw_fd());
    mount(Some(&source), at, None, libc::MS_BIND | libc::MS_REC, None)
}

/// mount(2): `None` where it allows a null pointer.
pub(super) fn mount(
    source: Option<&str>,
    target: &Path,
    kind: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let c = |s: &[u8]| CString::new(s).map_err(|_| "a path has a NUL byte".to_string());
    let optional = |s: Option<&str>| s.map(|s| c(s.as_bytes())).transpose();
    let (source_c, kind_c, data_c) = (optional(source)?, optional(kind)?, optional(data)?);
    let target_c = c(target.as_os_str().as_bytes())?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: valid NUL-terminated strings (or null) that outlive the call.
    let status = unsafe {
        libc::mount(
            ptr(&source_c),
            target_c.as_ptr(),
            ptr(&kind_c),
            flags,
            ptr(&data_c).cast(),
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(format!(
            "mounting {} on {}: {}",
            source.unwrap_or("-"),
            target.display(),
            std::io::Error::last_os_error()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn covers_the_outermost_closed_directory_above_each_grant_and_etc() {
        let temp = tempfile::tempdir().unwrap();
        let closed = temp.path().join("closed");
        let inner = closed.join("also-closed/tool");
        std::fs::create_dir_all(&inner).unwrap();
        for dir in [&closed, &closed.join("also-closed")] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let open = temp.path().join("open");
        std::fs::create_dir_all(&open).unwrap();
        let granted = [&inner, &open];
        let covers = covers(&granted, crate::identity::FIRST_UID);
        assert_eq!(covers, vec![PathBuf::from("/etc"), closed]);
    }
}
