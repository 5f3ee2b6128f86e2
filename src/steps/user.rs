//! `user "NAME" [groups=] [ssh-key=]… [password-hash=] [sudo=#true] [shell=]`: an account
//! inside the image, as diskimage-builder's `devuser` element makes one.
//!
//! Makes: the input tree after the image's own `useradd` (run in a chroot, so that the
//! distribution's `/etc/login.defs`, `/etc/skel` and sub-id ranges apply):
//! `useradd --create-home --shell SHELL --user-group [--groups A,B] [--password HASH] NAME`
//! (`--gid NAME` instead of `--user-group` when a group of that name already exists). Then, in
//! the tree:
//! - `~/.ssh/authorized_keys` with the `ssh-key`s, one a line (`.ssh` 0700, the file 0600,
//!   both owned by the user's uid and primary gid); nothing when there is no key;
//! - `/etc/sudoers.d/NAME` (0440, root): `NAME ALL=(ALL:ALL) NOPASSWD: ALL` with `sudo=#true`
//!   (the plan adds `sudo` to the image's packages; `passwd`, which has `useradd`, always);
//! - `/etc/shadow`: the password is locked (`!`) unless a hash is given; the last-change field
//!   is the image epoch's day. The image's shadow tools take it from `SOURCE_DATE_EPOCH`, which
//!   every chroot gets (shadow ≥ 4.6; checked with Debian 12's 4.13); it is set here as well,
//!   so that an older `useradd` cannot put today's date in the image.
//!
//! The uid and gid are the first free ones from `/etc/login.defs`' `UID_MIN`/`GID_MIN`, so the
//! same input tree always gives the same ids. Checked before anything runs, each with a clear
//! error: the user does not exist yet, every group of `groups` exists, the shell is a file of
//! the image. Needs root (chroot).
//!
//! Key: input tree key; `name`; `groups` (in the spec's order); `shell`; `sudo`; `password`
//! (`locked`, or the BLAKE3 of the hash, so that the hash is not stored in the index); then
//! `ssh-key#N` for each key in order.

use imgspec_cache::{Entry, EntryKind, StepOutput, Store};

use super::chroot::Session;
use super::tree::Tree;
use super::{FactError, StepContext, StepError};
use crate::key::KeyBuilder;
use crate::spec::model::User;

pub const VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct UserStep {
    pub user: User,
}

/// The packages a `user` layer needs in the image (the plan adds them to a package set before
/// it): `passwd` for `useradd`, and `sudo` when the user gets sudo.
pub fn packages(u: &User) -> Vec<&'static str> {
    let mut p = vec!["passwd"];
    if u.sudo {
        p.push("sudo");
    }
    p
}

/// An account as `/etc/passwd` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Account {
    uid: u32,
    gid: u32,
    home: String,
}

impl UserStep {
    pub fn hash(&self, k: &mut KeyBuilder) -> Result<(), FactError> {
        let u = &self.user;
        let password = match &u.password_hash {
            None => "locked".to_string(),
            Some(h) => format!("blake3 {}", blake3::hash(h.as_bytes()).to_hex()),
        };
        k.param("name", &u.name)
            .param("groups", &u.groups.join(" "))
            .param("shell", &u.shell)
            .param("sudo", if u.sudo { "yes" } else { "no" })
            .param("password", &password);
        for (i, key) in u.ssh_keys.iter().enumerate() {
            k.param(&format!("ssh-key#{}", i + 1), key);
        }
        Ok(())
    }

    pub fn label(&self) -> String {
        format!("user {}", self.user.name)
    }

    /// The script run inside the image. `own_group`: a group named like the user exists.
    pub fn script(&self, own_group: bool) -> String {
        let u = &self.user;
        let mut cmd = format!("useradd --create-home --shell {}", quote(&u.shell));
        if own_group {
            cmd.push_str(&format!(" --gid {}", quote(&u.name)));
        } else {
            cmd.push_str(" --user-group");
        }
        if !u.groups.is_empty() {
            cmd.push_str(&format!(" --groups {}", quote(&u.groups.join(","))));
        }
        if let Some(h) = &u.password_hash {
            cmd.push_str(&format!(" --password {}", quote(h)));
        }
        cmd.push_str(&format!(" {}", quote(&u.name)));
        format!(
            "set -e\n\
             command -v useradd >/dev/null || {{ echo 'the image has no useradd (package passwd)' >&2; exit 1; }}\n\
             {cmd}\n"
        )
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let (_, m) = ctx.input_tree(0)?;
        let own_group =
            precheck(&self.user, &Tree::new(m), ctx.store).map_err(|e| self.named(e))?;
        let s = Session::open(ctx, 0, "useradd runs in a chroot of the image")?;
        s.run(ctx, &self.script(own_group))?;
        let m = s.close(ctx)?;
        let mut tree = Tree::new(m);
        finish(&self.user, &mut tree, ctx.store, ctx.epoch).map_err(|e| self.named(e))?;
        ctx.tree_output(&tree.into_manifest())
    }

    fn named(&self, e: StepError) -> StepError {
        match e {
            StepError::Invalid(m) => StepError::Invalid(format!("user `{}`: {m}", self.user.name)),
            e => e,
        }
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn read_text(tree: &Tree, store: &Store, path: &str) -> Result<String, StepError> {
    let bytes = tree
        .read(store, path)?
        .ok_or_else(|| StepError::Invalid(format!("the image has no /{path}")))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The first field of every line of a colon-separated database (`/etc/passwd`, `/etc/group`).
fn names(db: &str) -> impl Iterator<Item = &str> {
    db.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(':').next())
}

/// Checks the input tree before anything runs. Returns whether a group named like the user
/// already exists (then it becomes the user's primary group).
fn precheck(u: &User, tree: &Tree, store: &Store) -> Result<bool, StepError> {
    let passwd = read_text(tree, store, "etc/passwd")?;
    if names(&passwd).any(|n| n == u.name) {
        return Err(StepError::Invalid(
            "the user already exists in the image".into(),
        ));
    }
    let group = read_text(tree, store, "etc/group")?;
    let missing: Vec<String> = u
        .groups
        .iter()
        .filter(|g| !names(&group).any(|n| n == g.as_str()))
        .map(|g| format!("`{g}`"))
        .collect();
    if !missing.is_empty() {
        return Err(StepError::Invalid(format!(
            "group{} {} {} not exist in the image: create {} first (e.g. `run \"groupadd NAME\"`, \
             or install the package that does) or leave {} out of `groups`",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            if missing.len() > 1 { "do" } else { "does" },
            if missing.len() > 1 { "them" } else { "it" },
            if missing.len() > 1 { "them" } else { "it" },
        )));
    }
    let shell = tree.resolve(&u.shell, true)?;
    if !matches!(
        tree.entries.get(&shell).map(|e| &e.kind),
        Some(EntryKind::File { .. } | EntryKind::Hardlink { .. })
    ) {
        return Err(StepError::Invalid(format!(
            "shell `{}` does not exist in the image: install its package in a package set \
             before the user, or give another `shell`",
            u.shell
        )));
    }
    let own_group = names(&group).any(|n| n == u.name);
    Ok(own_group)
}

fn account(passwd: &str, name: &str) -> Option<Account> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || f[0] != name {
            return None;
        }
        Some(Account {
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].to_string(),
        })
    })
}

/// `/etc/shadow` with `name`'s last-change field set to `day` and, unless `keep_password`, its
/// password locked. None when nothing changes.
fn fix_shadow(shadow: &str, name: &str, day: i64, keep_password: bool) -> Option<String> {
    let mut changed = false;
    let mut out = String::with_capacity(shadow.len());
    for line in shadow.lines() {
        let mut f: Vec<String> = line.split(':').map(String::from).collect();
        if f.len() >= 3 && f[0] == name {
            let day = day.to_string();
            if f[2] != day {
                f[2] = day;
                changed = true;
            }
            if !keep_password && !f[1].starts_with('!') {
                f[1] = format!("!{}", f[1].trim_start_matches('*'));
                changed = true;
            }
        }
        out.push_str(&f.join(":"));
        out.push('\n');
    }
    changed.then_some(out)
}

/// Replaces the content of an existing file, keeping its mode and owner.
fn rewrite(
    tree: &mut Tree,
    store: &Store,
    path: &str,
    content: &[u8],
    mtime: i64,
) -> Result<(), StepError> {
    let real = tree.resolve(path, true)?;
    let old = tree.entries.get(&real).cloned();
    tree.put_file(store, &real, content, 0o644, mtime)?;
    if let (Some(old), Some(new)) = (old, tree.entries.get_mut(&real)) {
        new.mode = old.mode;
        new.uid = old.uid;
        new.gid = old.gid;
        new.xattrs = old.xattrs;
    }
    Ok(())
}

fn chown(tree: &mut Tree, path: &str, mode: u32, uid: u32, gid: u32) {
    if let Some(e) = tree.entries.get_mut(path) {
        e.mode = mode;
        e.uid = uid;
        e.gid = gid;
    }
}

/// What is done in the tree after `useradd`: shadow's day, SSH keys, sudo.
fn finish(u: &User, tree: &mut Tree, store: &Store, epoch: i64) -> Result<(), StepError> {
    let passwd = read_text(tree, store, "etc/passwd")?;
    let acct = account(&passwd, &u.name).ok_or_else(|| {
        StepError::Invalid("useradd succeeded but the user is not in /etc/passwd".into())
    })?;
    let shadow = read_text(tree, store, "etc/shadow")?;
    if let Some(new) = fix_shadow(
        &shadow,
        &u.name,
        epoch.div_euclid(86_400),
        u.password_hash.is_some(),
    ) {
        rewrite(tree, store, "etc/shadow", new.as_bytes(), epoch)?;
    }
    if !u.ssh_keys.is_empty() {
        let home = tree.resolve(&acct.home, true)?;
        if !matches!(
            tree.entries.get(&home).map(|e| &e.kind),
            Some(EntryKind::Dir)
        ) {
            return Err(StepError::Invalid(format!(
                "the home directory `{}` is not a directory of the image",
                acct.home
            )));
        }
        let ssh = if home.is_empty() {
            ".ssh".to_string()
        } else {
            format!("{home}/.ssh")
        };
        tree.remove(&ssh);
        tree.entries.insert(
            ssh.clone(),
            Entry {
                path: ssh.clone(),
                kind: EntryKind::Dir,
                mode: 0o700,
                uid: acct.uid,
                gid: acct.gid,
                mtime: epoch,
                xattrs: Default::default(),
            },
        );
        let keys: String = u
            .ssh_keys
            .iter()
            .map(|k| format!("{}\n", k.trim()))
            .collect();
        let file = format!("{ssh}/authorized_keys");
        tree.put_file(store, &file, keys.as_bytes(), 0o600, epoch)?;
        chown(tree, &file, 0o600, acct.uid, acct.gid);
    }
    if u.sudo {
        tree.put_file(
            store,
            &format!("etc/sudoers.d/{}", u.name),
            sudoers(&u.name).as_bytes(),
            0o440,
            epoch,
        )?;
    }
    Ok(())
}

fn sudoers(name: &str) -> String {
    format!(
        "# Written by imgspec (user \"{name}\" sudo=#true)\n{name} ALL=(ALL:ALL) NOPASSWD: ALL\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgspec_cache::TreeManifest;
    use std::collections::BTreeMap;

    fn user() -> User {
        User {
            name: "ops".into(),
            groups: vec!["adm".into(), "sudo".into()],
            ssh_keys: vec![
                "ssh-ed25519 AAAAC3Nza ops@a".into(),
                "ssh-rsa AAAAB3 ops@b".into(),
            ],
            password_hash: None,
            sudo: true,
            shell: "/bin/bash".into(),
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        (d, s)
    }

    fn dir(p: &str, mode: u32, uid: u32) -> Entry {
        Entry {
            path: p.into(),
            kind: EntryKind::Dir,
            mode,
            uid,
            gid: uid,
            mtime: 0,
            xattrs: BTreeMap::new(),
        }
    }

    /// A tree as useradd leaves it (the input of `finish`), or before (`precheck`).
    fn tree(s: &Store, with_ops: bool) -> Tree {
        let mut t = Tree::new(TreeManifest {
            entries: vec![
                dir("", 0o755, 0),
                dir("usr", 0o755, 0),
                dir("usr/bin", 0o755, 0),
                Entry {
                    kind: EntryKind::Symlink {
                        target: "usr/bin".into(),
                    },
                    mode: 0o777,
                    ..dir("bin", 0, 0)
                },
                dir("home", 0o755, 0),
            ],
        });
        t.put_file(s, "usr/bin/bash", b"ELF", 0o755, 0).unwrap();
        let mut passwd = "root:x:0:0:root:/root:/bin/bash\n".to_string();
        let mut shadow = "root:*:19000:0:99999:7:::\n".to_string();
        if with_ops {
            passwd.push_str("ops:x:1000:1000::/home/ops:/bin/bash\n");
            shadow.push_str("ops:!:20000:0:99999:7:::\n");
            t.entries
                .insert("home/ops".into(), dir("home/ops", 0o700, 1000));
        }
        t.put_file(s, "etc/passwd", passwd.as_bytes(), 0o644, 0)
            .unwrap();
        t.put_file(s, "etc/shadow", shadow.as_bytes(), 0o640, 0)
            .unwrap();
        t.entries.get_mut("etc/shadow").unwrap().gid = 42;
        t.put_file(
            s,
            "etc/group",
            b"root:x:0:\nadm:x:4:\nsudo:x:27:\n",
            0o644,
            0,
        )
        .unwrap();
        t
    }

    fn text(t: &Tree, s: &Store, p: &str) -> String {
        String::from_utf8(t.read(s, p).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn script_quotes_everything() {
        let mut u = user();
        u.password_hash = Some("$6$salt$it's".into());
        let s = UserStep { user: u }.script(false);
        assert!(
            s.ends_with(
                "\nuseradd --create-home --shell '/bin/bash' --user-group --groups 'adm,sudo' \
                 --password '$6$salt$it'\\''s' 'ops'\n"
            ),
            "{s}"
        );
        let s = UserStep { user: user() }.script(true);
        assert!(s.contains(" --gid 'ops' "), "{s}");
        assert!(!s.contains("--password"), "{s}");
    }

    #[test]
    fn precheck_names_missing_groups_existing_users_and_missing_shells() {
        let (_d, s) = store();
        let t = tree(&s, false);
        assert!(!precheck(&user(), &t, &s).unwrap());
        let mut u = user();
        u.groups = vec!["adm".into(), "wheel".into(), "docker".into()];
        let e = precheck(&u, &t, &s).unwrap_err().to_string();
        assert!(
            e.starts_with("groups `wheel`, `docker` do not exist in the image"),
            "{e}"
        );
        u.groups = vec!["wheel".into()];
        let e = precheck(&u, &t, &s).unwrap_err().to_string();
        assert!(
            e.starts_with("group `wheel` does not exist in the image"),
            "{e}"
        );
        let mut u = user();
        u.shell = "/bin/zsh".into();
        let e = precheck(&u, &t, &s).unwrap_err().to_string();
        assert!(e.contains("shell `/bin/zsh` does not exist"), "{e}");
        let e = precheck(&user(), &tree(&s, true), &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already exists"), "{e}");
        // A group named like the user becomes its primary group.
        let mut t = tree(&s, false);
        t.put_file(
            &s,
            "etc/group",
            b"ops:x:500:\nadm:x:4:\nsudo:x:27:\n",
            0o644,
            0,
        )
        .unwrap();
        assert!(precheck(&user(), &t, &s).unwrap());
    }

    #[test]
    fn finish_writes_keys_owned_by_the_user_and_sudoers() {
        let (_d, s) = store();
        let mut t = tree(&s, true);
        finish(&user(), &mut t, &s, 1_686_355_200).unwrap();
        let ssh = &t.entries["home/ops/.ssh"];
        assert_eq!((ssh.mode, ssh.uid, ssh.gid), (0o700, 1000, 1000));
        assert_eq!(ssh.kind, EntryKind::Dir);
        let ak = &t.entries["home/ops/.ssh/authorized_keys"];
        assert_eq!((ak.mode, ak.uid, ak.gid), (0o600, 1000, 1000));
        assert_eq!(
            text(&t, &s, "home/ops/.ssh/authorized_keys"),
            "ssh-ed25519 AAAAC3Nza ops@a\nssh-rsa AAAAB3 ops@b\n"
        );
        let su = &t.entries["etc/sudoers.d/ops"];
        assert_eq!((su.mode, su.uid, su.gid), (0o440, 0, 0));
        assert!(text(&t, &s, "etc/sudoers.d/ops").ends_with("\nops ALL=(ALL:ALL) NOPASSWD: ALL\n"));
        // The last-change day is the epoch's, and /etc/shadow keeps its mode and group.
        assert_eq!(
            text(&t, &s, "etc/shadow"),
            "root:*:19000:0:99999:7:::\nops:!:19518:0:99999:7:::\n"
        );
        let sh = &t.entries["etc/shadow"];
        assert_eq!((sh.mode, sh.uid, sh.gid), (0o640, 0, 42));
    }

    #[test]
    fn finish_without_keys_or_sudo_writes_neither() {
        let (_d, s) = store();
        let mut t = tree(&s, true);
        let mut u = user();
        u.ssh_keys.clear();
        u.sudo = false;
        finish(&u, &mut t, &s, 0).unwrap();
        assert!(!t.entries.contains_key("home/ops/.ssh"));
        assert!(!t.entries.contains_key("etc/sudoers.d/ops"));
    }

    #[test]
    fn shadow_day_and_lock() {
        let sh = "root:*:1:::::\nops:$6$x:20000:0:99999:7:::\n";
        assert_eq!(
            fix_shadow(sh, "ops", 19518, true).unwrap(),
            "root:*:1:::::\nops:$6$x:19518:0:99999:7:::\n"
        );
        assert_eq!(
            fix_shadow(sh, "ops", 19518, false).unwrap(),
            "root:*:1:::::\nops:!$6$x:19518:0:99999:7:::\n"
        );
        assert_eq!(fix_shadow("ops:!:19518::::::\n", "ops", 19518, false), None);
    }

    #[test]
    fn key_hides_the_password_hash_and_orders_keys() {
        let mut u = user();
        u.password_hash = Some("$6$secret".into());
        let mut k = KeyBuilder::new("user", VERSION);
        UserStep { user: u }.hash(&mut k).unwrap();
        let parts = k.finish().1;
        assert!(parts.iter().all(|p| !p.value.contains("secret")));
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "name",
                "groups",
                "shell",
                "sudo",
                "password",
                "ssh-key#1",
                "ssh-key#2"
            ]
        );
        assert_eq!(packages(&user()), ["passwd", "sudo"]);
    }
}
