//! Trees to and from tar streams: a deterministic PAX writer and a reader of GNU and PAX
//! archives (long names, hard links, device nodes, `SCHILY.xattr.*` records).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::path::PathBuf;

use tar::{EntryType, Header};

use crate::tree::{clamp, parent};
use crate::{
    BlobDigest, BlobReader, Entry, EntryKind, ImportOptions, Result, Store, StoreError,
    TreeManifest,
};

const PAX_XATTR: &str = "SCHILY.xattr.";
/// Largest value of an 8-byte octal field (mode, uid, gid, device numbers).
const OCTAL8_MAX: u64 = 0o7777777;
/// Largest value of a 12-byte octal field (size, mtime).
const OCTAL12_MAX: u64 = 0o77777777777;

fn stream_err(source: io::Error) -> StoreError {
    // A store error (say, a corrupt blob) travels through the tar writer inside an io::Error.
    if source.get_ref().is_some_and(|e| e.is::<StoreError>()) {
        let inner = source.into_inner().expect("checked above");
        return *inner.downcast::<StoreError>().expect("checked above");
    }
    StoreError::Io {
        path: PathBuf::from("<tar stream>"),
        source,
    }
}

/// Where a manifest path goes in an archive: the root is `./`, every other entry `./path`,
/// directories with a trailing `/` (the form of `tar -C root .`, and of mmdebstrap's output).
fn member_name(e: &Entry) -> String {
    if e.path.is_empty() {
        "./".to_string()
    } else if e.kind == EntryKind::Dir {
        format!("./{}/", e.path)
    } else {
        format!("./{}", e.path)
    }
}

/// Puts `name` in the ustar name (and prefix) fields, or in a PAX `path` record when it does
/// not fit.
fn set_name(h: &mut Header, name: &[u8], pax: &mut Vec<(String, Vec<u8>)>) {
    let u = h.as_ustar_mut().expect("a ustar header");
    if name.len() <= u.name.len() {
        u.name[..name.len()].copy_from_slice(name);
        return;
    }
    // Split at a `/` so that the part before fits the prefix and the part after the name.
    let split = (name.len().saturating_sub(u.name.len() + 1)..name.len().min(u.prefix.len() + 1))
        .find(|&i| name[i] == b'/' && i + 1 < name.len());
    if let Some(i) = split {
        u.prefix[..i].copy_from_slice(&name[..i]);
        u.name[..name.len() - i - 1].copy_from_slice(&name[i + 1..]);
        return;
    }
    let n = u.name.len();
    u.name.copy_from_slice(&name[..n]);
    pax.push(("path".into(), name.to_vec()));
}

fn set_link_name(h: &mut Header, target: &[u8], pax: &mut Vec<(String, Vec<u8>)>) {
    let u = h.as_ustar_mut().expect("a ustar header");
    let n = u.linkname.len();
    if target.len() <= n {
        u.linkname[..target.len()].copy_from_slice(target);
    } else {
        u.linkname.copy_from_slice(&target[..n]);
        pax.push(("linkpath".into(), target.to_vec()));
    }
}

/// One PAX record: `LEN KEY=VALUE\n`, where LEN counts the whole record including itself.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = 3 + key.len() + value.len(); // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// The PAX extended header describing the next member, named like GNU tar names them.
fn pax_header(e: &Entry, mtime: u64, records: &[(String, Vec<u8>)]) -> (Header, Vec<u8>) {
    let mut data = Vec::new();
    for (k, v) in records {
        pax_record(&mut data, k, v);
    }
    let base = e.path.rsplit('/').next().unwrap_or("");
    let mut cut = base.len().min(80);
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    let name = format!("./PaxHeaders/{}", &base[..cut]);
    let mut h = Header::new_ustar();
    h.as_ustar_mut().expect("a ustar header").name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(data.len() as u64);
    h.set_entry_type(EntryType::XHeader);
    h.set_cksum();
    (h, data)
}

/// A blob's bytes, exactly `remaining` of them, its digest checked before the end is reported.
/// `export_tar` decompresses files up to this size ahead of the writer, in parallel...
const PREFETCH_FILE_MAX: u64 = 4 << 20;
/// ...a batch of about this many bytes at a time, while the writer writes the batch before.
const PREFETCH_BATCH: u64 = 32 << 20;

/// The contents of the small files of `entries` (by index), decompressed and checked on
/// rayon's threads in batches, in manifest order, sent to `tx` one batch at a time.
fn prefetch(
    store: &Store,
    entries: &[Entry],
    tx: std::sync::mpsc::SyncSender<Result<HashMap<usize, Vec<u8>>>>,
) {
    use rayon::prelude::*;
    let send = |batch: &[(usize, BlobDigest)]| {
        let r = batch
            .par_iter()
            .map(|(i, d)| Ok((*i, store.read_blob(d)?)))
            .collect::<Result<HashMap<usize, Vec<u8>>>>();
        tx.send(r).is_ok()
    };
    let mut batch = Vec::new();
    let mut bytes = 0;
    for (i, e) in entries.iter().enumerate() {
        if let EntryKind::File { digest, size } = &e.kind {
            if *size <= PREFETCH_FILE_MAX {
                batch.push((i, *digest));
                bytes += size;
                if bytes >= PREFETCH_BATCH {
                    if !send(&batch) {
                        return; // the writer stopped
                    }
                    batch.clear();
                    bytes = 0;
                }
            }
        }
    }
    if !batch.is_empty() {
        send(&batch);
    }
}

struct ExactBlob<'a> {
    r: BlobReader,
    remaining: u64,
    path: &'a str,
}

impl ExactBlob<'_> {
    /// The blob's length differs from the manifest's: say why, a corrupt blob first.
    fn wrong_length(&mut self) -> io::Error {
        let mut buf = vec![0u8; 1 << 16];
        let err = loop {
            match self.r.read_checked(&mut buf) {
                Ok(0) => {
                    break StoreError::bad_entry(self.path, "size differs from its blob's length");
                }
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

impl Read for ExactBlob<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            // One more read: it checks the digest, and must find the end.
            let mut probe = [0u8; 1];
            if self.r.read(&mut probe)? != 0 {
                return Err(self.wrong_length());
            }
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.r.read(&mut buf[..max])?;
        if n == 0 {
            return Err(self.wrong_length());
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// `./etc//x` → `etc/x`, `./` → `` (the root); `..` and absolute paths are refused.
fn normalize(raw: &str) -> Result<String> {
    if raw.starts_with('/') {
        return Err(StoreError::bad_entry(raw, "absolute path in archive"));
    }
    let parts: Vec<&str> = raw
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(StoreError::bad_entry(
            raw,
            "path escapes the tree through `..`",
        ));
    }
    if raw.contains('\0') {
        return Err(StoreError::bad_entry(raw, "path contains a NUL byte"));
    }
    Ok(parts.join("/"))
}

fn utf8(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        StoreError::bad_entry(
            String::from_utf8_lossy(bytes),
            format!("{what} is not UTF-8"),
        )
    })
}

/// A PAX time (`1700000000`, `1700000000.25`, `-1.5`) in whole seconds, rounded down.
fn parse_pax_time(v: &str) -> Option<i64> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = int.parse().ok()?;
    let frac_nonzero = frac.bytes().any(|b| b != b'0');
    // `-0.5` has integer part `-0`: the sign is in the text, not in `secs`.
    Some(if int.starts_with('-') {
        secs - i64::from(frac_nonzero)
    } else {
        secs
    })
}

/// Makes every group of hard-linked paths canonical: the first path in manifest order holds
/// the file, the others link to it, and all share its metadata (they are one inode).
fn canonicalize_hardlinks(entries: &mut BTreeMap<String, Entry>) -> Result<()> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, e) in entries.iter() {
        let EntryKind::Hardlink { target } = &e.kind else {
            continue;
        };
        let mut cur = target;
        let mut hops = 0;
        loop {
            match entries.get(cur).map(|t| &t.kind) {
                Some(EntryKind::File { .. }) => break,
                Some(EntryKind::Hardlink { target }) if hops <= entries.len() => {
                    cur = target;
                    hops += 1;
                }
                _ => {
                    return Err(StoreError::bad_entry(
                        path,
                        format!("hard link target `{target}` is not a regular file of the archive"),
                    ))
                }
            }
        }
        groups.entry(cur.clone()).or_default().push(path.clone());
    }
    for (file, mut members) in groups {
        members.push(file.clone());
        members.sort();
        let proto = entries[&file].clone();
        let first = members[0].clone();
        for m in &members {
            let e = entries.get_mut(m).expect("member of the archive");
            *e = Entry {
                path: m.clone(),
                kind: if *m == first {
                    proto.kind.clone()
                } else {
                    EntryKind::Hardlink {
                        target: first.clone(),
                    }
                },
                ..proto.clone()
            };
        }
    }
    Ok(())
}

impl Store {
    /// Imports a tar stream (GNU or PAX), storing every file's content. Paths are normalised
    /// (`./etc` → `etc`, `./` → the root), a later member replaces an earlier one of the same
    /// path, and directories the archive implies but does not list are added with mode 0755,
    /// owner 0:0, mtime 0.
    pub fn import_tar(&self, r: &mut dyn Read, opts: &ImportOptions) -> Result<TreeManifest> {
        let mut archive = tar::Archive::new(r);
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        for member in archive.entries().map_err(stream_err)? {
            let mut te = member.map_err(stream_err)?;
            let raw = utf8(&te.path_bytes(), "path")?;
            let path = normalize(&raw)?;
            let header = te.header().clone();
            let mut xattrs = BTreeMap::new();
            let mut pax_mtime = None;
            if let Some(exts) = te.pax_extensions().map_err(stream_err)? {
                for ext in exts {
                    let ext = ext.map_err(stream_err)?;
                    let key = utf8(ext.key_bytes(), "PAX key")?;
                    if let Some(name) = key.strip_prefix(PAX_XATTR) {
                        xattrs.insert(name.to_string(), ext.value_bytes().to_vec());
                    } else if key == "mtime" {
                        pax_mtime = std::str::from_utf8(ext.value_bytes())
                            .ok()
                            .and_then(parse_pax_time);
                    }
                }
            }
            let bad = |reason: &str| StoreError::bad_entry(&raw, reason);
            let kind = match header.entry_type() {
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    let stored = self.put_reader(&mut te)?;
                    EntryKind::File {
                        digest: stored.digest,
                        size: stored.size,
                    }
                }
                EntryType::Directory => EntryKind::Dir,
                EntryType::Symlink => {
                    let target = te
                        .link_name_bytes()
                        .ok_or_else(|| bad("symlink without target"))?;
                    EntryKind::Symlink {
                        target: utf8(&target, "symlink target")?,
                    }
                }
                EntryType::Link => {
                    let target = te
                        .link_name_bytes()
                        .ok_or_else(|| bad("hard link without target"))?;
                    EntryKind::Hardlink {
                        target: normalize(&utf8(&target, "hard link target")?)?,
                    }
                }
                EntryType::Char | EntryType::Block => {
                    let major = header.device_major().map_err(stream_err)?.unwrap_or(0);
                    let minor = header.device_minor().map_err(stream_err)?.unwrap_or(0);
                    if header.entry_type() == EntryType::Char {
                        EntryKind::Char { major, minor }
                    } else {
                        EntryKind::Block { major, minor }
                    }
                }
                EntryType::Fifo => EntryKind::Fifo,
                EntryType::XGlobalHeader => continue,
                other => {
                    return Err(bad(&format!(
                        "unsupported tar member type {:?}",
                        other.as_byte() as char
                    )))
                }
            };
            let id = |v: io::Result<u64>| -> Result<u32> {
                u32::try_from(v.map_err(stream_err)?).map_err(|_| bad("uid or gid out of range"))
            };
            let mtime = match pax_mtime {
                Some(t) => t,
                None => i64::try_from(header.mtime().map_err(stream_err)?)
                    .map_err(|_| bad("mtime out of range"))?,
            };
            let entry = Entry {
                path: path.clone(),
                kind,
                mode: header.mode().map_err(stream_err)? & 0o7777,
                uid: id(header.uid())?,
                gid: id(header.gid())?,
                mtime: clamp(mtime, opts),
                xattrs,
            };
            if path.is_empty() && entry.kind != EntryKind::Dir {
                return Err(bad("the archive root is not a directory"));
            }
            entries.insert(path, entry);
        }
        let mut implied = Vec::new();
        for path in entries.keys() {
            let mut p = parent(path);
            while let Some(dir) = p {
                if entries.contains_key(dir) {
                    break;
                }
                implied.push(dir.to_string());
                p = parent(dir);
            }
        }
        for dir in implied {
            entries.entry(dir.clone()).or_insert(Entry {
                path: dir,
                kind: EntryKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: clamp(0, opts),
                xattrs: BTreeMap::new(),
            });
        }
        canonicalize_hardlinks(&mut entries)?;
        let m = TreeManifest {
            entries: entries.into_values().collect(),
        };
        m.validate()?;
        Ok(m)
    }

    /// Writes `m` as a deterministic PAX tar: members in manifest order, numeric owners with
    /// empty user and group names, mtimes clamped to `mtime_clamp`, xattrs as
    /// `SCHILY.xattr.*` records, hard links as links. The same manifest (and clamp) always
    /// gives the same bytes.
    pub fn export_tar(
        &self,
        m: &TreeManifest,
        w: &mut dyn Write,
        mtime_clamp: Option<i64>,
    ) -> Result<()> {
        m.validate()?;
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            scope.spawn(|| prefetch(self, &m.entries, tx));
            self.write_tar(m, w, mtime_clamp, &rx)
        })
    }

    fn write_tar(
        &self,
        m: &TreeManifest,
        w: &mut dyn Write,
        mtime_clamp: Option<i64>,
        prefetched: &std::sync::mpsc::Receiver<Result<HashMap<usize, Vec<u8>>>>,
    ) -> Result<()> {
        let mut builder = tar::Builder::new(w);
        let mut batch: HashMap<usize, Vec<u8>> = HashMap::new();
        for (i, e) in m.entries.iter().enumerate() {
            let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
            let mut h = Header::new_ustar();
            set_name(&mut h, member_name(e).as_bytes(), &mut pax);
            h.set_mode(e.mode);
            for (value, key, set) in [
                (e.uid, "uid", Header::set_uid as fn(&mut Header, u64)),
                (e.gid, "gid", Header::set_gid),
            ] {
                if u64::from(value) > OCTAL8_MAX {
                    pax.push((key.into(), value.to_string().into_bytes()));
                    set(&mut h, 0);
                } else {
                    set(&mut h, u64::from(value));
                }
            }
            let mtime = mtime_clamp.map_or(e.mtime, |c| e.mtime.min(c));
            let header_mtime = match u64::try_from(mtime) {
                Ok(t) if t <= OCTAL12_MAX => t,
                _ => {
                    pax.push(("mtime".into(), mtime.to_string().into_bytes()));
                    0
                }
            };
            h.set_mtime(header_mtime);
            h.set_size(0);
            let mut content = None;
            let mut small = None;
            match &e.kind {
                EntryKind::Dir => h.set_entry_type(EntryType::Directory),
                EntryKind::File { digest, size } => {
                    h.set_entry_type(EntryType::Regular);
                    if *size > OCTAL12_MAX {
                        pax.push(("size".into(), size.to_string().into_bytes()));
                    } else {
                        h.set_size(*size);
                    }
                    if *size <= PREFETCH_FILE_MAX {
                        if !batch.contains_key(&i) {
                            batch = prefetched.recv().map_err(|_| {
                                StoreError::bad_entry(&e.path, "the prefetch thread stopped")
                            })??;
                        }
                        let data = batch.remove(&i).ok_or_else(|| {
                            StoreError::bad_entry(&e.path, "missing from its prefetch batch")
                        })?;
                        if data.len() as u64 != *size {
                            return Err(StoreError::bad_entry(
                                &e.path,
                                "size differs from its blob's length",
                            ));
                        }
                        small = Some(data);
                    } else {
                        content = Some(ExactBlob {
                            r: self.open_blob(digest)?,
                            remaining: *size,
                            path: &e.path,
                        });
                    }
                }
                EntryKind::Symlink { target } => {
                    h.set_entry_type(EntryType::Symlink);
                    set_link_name(&mut h, target.as_bytes(), &mut pax);
                }
                EntryKind::Hardlink { target } => {
                    h.set_entry_type(EntryType::Link);
                    set_link_name(&mut h, format!("./{target}").as_bytes(), &mut pax);
                }
                EntryKind::Char { major, minor } | EntryKind::Block { major, minor } => {
                    h.set_entry_type(if matches!(e.kind, EntryKind::Char { .. }) {
                        EntryType::Char
                    } else {
                        EntryType::Block
                    });
                    if u64::from(*major) > OCTAL8_MAX || u64::from(*minor) > OCTAL8_MAX {
                        return Err(StoreError::bad_entry(
                            &e.path,
                            "device number too large for tar",
                        ));
                    }
                    h.set_device_major(*major).map_err(stream_err)?;
                    h.set_device_minor(*minor).map_err(stream_err)?;
                }
                EntryKind::Fifo => h.set_entry_type(EntryType::Fifo),
            }
            for (name, value) in &e.xattrs {
                pax.push((format!("{PAX_XATTR}{name}"), value.clone()));
            }
            if !pax.is_empty() {
                let (ph, data) = pax_header(e, header_mtime, &pax);
                builder.append(&ph, &data[..]).map_err(stream_err)?;
            }
            h.set_cksum();
            match (content, small) {
                (Some(blob), _) => builder.append(&h, blob).map_err(stream_err)?,
                (None, Some(data)) => builder.append(&h, &data[..]).map_err(stream_err)?,
                (None, None) => builder.append(&h, io::empty()).map_err(stream_err)?,
            }
        }
        builder.finish().map_err(stream_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_across_prefetch_batches_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        // More than two batches of small files, with a large file (streamed, not prefetched)
        // and a directory in between.
        let mut entries = vec![Entry {
            path: String::new(),
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 1,
            xattrs: BTreeMap::new(),
        }];
        let file = |path: String, len: usize| {
            let mut data = vec![0u8; len];
            blake3::Hasher::new()
                .update(path.as_bytes())
                .finalize_xof()
                .fill(&mut data);
            let r = store.put_bytes(&data).unwrap();
            Entry {
                path,
                kind: EntryKind::File {
                    digest: r.digest,
                    size: r.size,
                },
                ..entries[0].clone()
            }
        };
        let mut files: Vec<Entry> = (0..40).map(|i| file(format!("f{i:02}"), 2 << 20)).collect();
        files.push(file("g-large".into(), (PREFETCH_FILE_MAX as usize) + 1));
        files.extend((40..80).map(|i| file(format!("h{i:02}"), 1 << 20)));
        entries.extend(files);
        let m = TreeManifest { entries };
        assert!(m.is_sorted());
        let mut tar = Vec::new();
        store.export_tar(&m, &mut tar, None).unwrap();
        let back = store
            .import_tar(&mut &tar[..], &ImportOptions::default())
            .unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn paths_are_normalised_and_escapes_refused() {
        assert_eq!(normalize("./").unwrap(), "");
        assert_eq!(normalize(".").unwrap(), "");
        assert_eq!(normalize("./etc/").unwrap(), "etc");
        assert_eq!(normalize("etc//./passwd").unwrap(), "etc/passwd");
        assert!(normalize("../etc").is_err());
        assert!(normalize("a/../../b").is_err());
        assert!(normalize("/etc/passwd").is_err());
    }

    #[test]
    fn pax_records_count_their_own_length() {
        for value_len in [0, 1, 5, 6, 7, 90, 95, 96, 97, 990, 995, 996] {
            let mut out = Vec::new();
            pax_record(&mut out, "path", &vec![b'x'; value_len]);
            let (len, _) = std::str::from_utf8(&out).unwrap().split_once(' ').unwrap();
            assert_eq!(
                len.parse::<usize>().unwrap(),
                out.len(),
                "value of {value_len} bytes"
            );
        }
    }

    #[test]
    fn pax_times_round_down() {
        assert_eq!(parse_pax_time("1700000000"), Some(1_700_000_000));
        assert_eq!(parse_pax_time("1700000000.999"), Some(1_700_000_000));
        assert_eq!(parse_pax_time("-1.5"), Some(-2));
        assert_eq!(parse_pax_time("-0.5"), Some(-1));
        assert_eq!(parse_pax_time("-3.000"), Some(-3));
        assert_eq!(parse_pax_time("soon"), None);
    }

    #[test]
    fn long_names_split_into_prefix_or_go_to_pax() {
        let mut pax = Vec::new();
        let mut h = Header::new_ustar();
        let name = format!("./{}/{}", "d".repeat(120), "f".repeat(50));
        set_name(&mut h, name.as_bytes(), &mut pax);
        assert!(pax.is_empty());
        assert_eq!(h.path_bytes().as_ref(), name.as_bytes());

        let mut h = Header::new_ustar();
        let name = format!("./{}", "f".repeat(200));
        set_name(&mut h, name.as_bytes(), &mut pax);
        assert_eq!(pax, vec![("path".to_string(), name.into_bytes())]);
    }
}
