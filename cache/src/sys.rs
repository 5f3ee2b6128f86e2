//! Thin wrappers over the few libc calls std does not offer: extended attributes, device nodes,
//! fifos, timestamps of symlinks, flock. All `unsafe` of the crate lives here.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOTSUP) || e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The extended attributes of `path` itself (not of a symlink's target), as raw name/value
/// pairs, sorted by name. A filesystem without xattr support has none.
pub(crate) fn list_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = cpath(path)?;
    let mut names = Vec::new();
    loop {
        // SAFETY: a null buffer of size 0 asks for the size needed.
        let need = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if need < 0 {
            let e = io::Error::last_os_error();
            return if unsupported(&e) {
                Ok(Vec::new())
            } else {
                Err(e)
            };
        }
        if need == 0 {
            return Ok(Vec::new());
        }
        names.resize(need as usize, 0u8);
        // SAFETY: the buffer is valid for `names.len()` bytes.
        let got = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue; // grew in between
            }
            return Err(e);
        }
        names.truncate(got as usize);
        break;
    }
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).expect("split on NUL");
        if let Some(value) = get_xattr(&c, &cname)? {
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// One attribute's value; `None` when it vanished between list and get.
fn get_xattr(path: &CString, name: &CString) -> io::Result<Option<Vec<u8>>> {
    let mut value = Vec::new();
    loop {
        // SAFETY: a null buffer of size 0 asks for the size needed.
        let need =
            unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if need < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENODATA) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        value.resize(need as usize, 0u8);
        if need == 0 {
            return Ok(Some(value));
        }
        // SAFETY: the buffer is valid for `value.len()` bytes.
        let got = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => continue,
                Some(libc::ENODATA) => return Ok(None),
                _ => return Err(e),
            }
        }
        value.truncate(got as usize);
        return Ok(Some(value));
    }
}

/// Sets one extended attribute on `path` itself (not on a symlink's target).
pub(crate) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = cpath(path)?;
    let n = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    // SAFETY: both strings are NUL-terminated and the value buffer is valid for its length.
    check(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Creates a character (`block == false`) or block device node, mode 0600 until chmod.
pub(crate) fn mknod(path: &Path, block: bool, major: u32, minor: u32) -> io::Result<()> {
    let c = cpath(path)?;
    let kind = if block { libc::S_IFBLK } else { libc::S_IFCHR };
    let dev = libc::makedev(major, minor);
    // SAFETY: the path is NUL-terminated.
    check(unsafe { libc::mknod(c.as_ptr(), kind | 0o600, dev) })
}

pub(crate) fn mkfifo(path: &Path) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: the path is NUL-terminated.
    check(unsafe { libc::mkfifo(c.as_ptr(), 0o600) })
}

pub(crate) fn dev_major_minor(rdev: u64) -> (u32, u32) {
    (
        libc::major(rdev as libc::dev_t),
        libc::minor(rdev as libc::dev_t),
    )
}

/// Sets atime and mtime of `path` itself (a symlink is not followed) to `secs`.
pub(crate) fn set_times_nofollow(path: &Path, secs: i64) -> io::Result<()> {
    let c = cpath(path)?;
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: the path is NUL-terminated and `times` holds the two timespecs utimensat reads.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Takes an exclusive flock, waiting for it.
pub(crate) fn lock_exclusive(file: &File) -> io::Result<()> {
    loop {
        // SAFETY: the fd is valid for the life of `file`.
        let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if ret == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Takes an exclusive flock without waiting: `Ok(false)` when another open file holds it.
/// Works on a directory opened read-only too.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: the fd is valid for the life of `file`.
    let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if ret == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// `lseek(SEEK_DATA)`: where the next data at or after `from` starts; `None` if only a hole
/// follows. A filesystem that cannot tell says `from` (all data).
pub(crate) fn seek_data(file: &File, from: u64) -> io::Result<Option<u64>> {
    let at =
        libc::off_t::try_from(from).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek on a descriptor the caller holds; it only moves the file offset.
    let r = unsafe { libc::lseek(file.as_raw_fd(), at, libc::SEEK_DATA) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// `lseek(SEEK_HOLE)`: where the next hole at or after `from` starts (the end of the file, at
/// the latest).
pub(crate) fn seek_hole(file: &File, from: u64) -> io::Result<u64> {
    let at =
        libc::off_t::try_from(from).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: as in `seek_data`.
    let r = unsafe { libc::lseek(file.as_raw_fd(), at, libc::SEEK_HOLE) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// `copy_file_range` of up to `len` bytes at offset `at` of `from` to the same offset of
/// `to`, in the kernel; returns how many it copied (0 at the end of `from`).
pub(crate) fn copy_range(from: &File, to: &File, at: u64, len: u64) -> io::Result<u64> {
    let mut off_in =
        libc::loff_t::try_from(at).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut off_out = off_in;
    let len = usize::try_from(len).unwrap_or(usize::MAX).min(1 << 30);
    // SAFETY: two descriptors the caller holds and two offsets that live across the call; the
    // kernel reads and writes no memory of ours but those offsets.
    let r = unsafe {
        libc::copy_file_range(
            from.as_raw_fd(),
            &mut off_in,
            to.as_raw_fd(),
            &mut off_out,
            len,
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}
