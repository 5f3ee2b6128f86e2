//! Phase two, first half: each `image` and `template` node read into a [`Decl`], with every
//! node of its body checked and typed (the `disk` node is read by [`super::disk`]).
//!
//! A `Decl` holds only what its own body says; [`super::resolve`] then follows `extends` and
//! checks what needs the whole, inherited image.

use std::collections::BTreeMap;

use kdl::KdlNode;
use miette::SourceSpan;

use crate::element::{self, ELEMENTS};

use super::disk;
use super::error::{did_you_mean, SpecError};
use super::model::{
    Base, Bootloader, BootloaderKind, Debian, Disk, DiskImage, DiskSource, Files, Layer,
    OutputFormat, Packages, Run, User, CLEANINGS, DEFAULT_CMDLINE,
};
use super::read::{
    arg_count, children, node_name, Cx, FileId, FromValue, Problems, Scalar, Shape, Spanned, MANY,
};
use super::source::SourceFile;
use super::values::{
    absolute_path, check_simple_name, check_user_name, check_word, is_package_name, resolve_path,
    words, Confined, Need,
};
use crate::distro::Distro;

/// Index of a declaration in the list of all of them, in file order.
pub(crate) type DeclId = usize;

/// One `image` or `template`, as its own body declares it.
pub(crate) struct Decl {
    /// `image` (true) or `template`.
    pub buildable: bool,
    pub name: Spanned<String>,
    pub file: FileId,
    pub extends: Option<Spanned<String>>,
    pub epoch: Option<Own<i64>>,
    pub base: Option<Own<Base>>,
    /// The layers after the base, in the order written.
    pub layers: Vec<Layer>,
    pub bootloader: Option<Own<Bootloader>>,
    pub disk: Option<Own<Disk>>,
    /// Sorted, deduplicated, each with where it was written.
    pub outputs: Option<Own<Vec<Spanned<OutputFormat>>>>,
}

/// A node a declaration gives itself: where its name is, and its value, `None` when it is
/// invalid (already reported: checks that need the value skip it).
pub(crate) struct Own<T> {
    pub span: SourceSpan,
    pub value: Option<T>,
}

/// The nodes that add a layer, and their readers.
type LayerReader = fn(&mut Cx<'_>, &KdlNode) -> Option<Layer>;
const LAYERS: &[(&str, LayerReader)] = &[
    ("packages", read_packages),
    ("files", read_files),
    ("run", read_run),
    ("user", read_user),
    ("element", read_element),
];

const TOP_NODES: &[&str] = &["import", "image", "template"];
const IMAGE_NODES: &[&str] = &[
    "epoch",
    "base",
    "packages",
    "files",
    "run",
    "user",
    "element",
    "bootloader",
    "disk",
    "output",
];

const IMAGE: Shape<'static> = Shape {
    usage: "image \"NAME\" [extends=\"OTHER\"] { … }",
    max_args: 1,
    props: &["extends"],
    repeatable: &[],
    children: true,
};
const TEMPLATE: Shape<'static> = Shape {
    usage: "template \"NAME\" [extends=\"OTHER\"] { … }",
    ..IMAGE
};
/// The shape of a node with one argument and nothing else (others are built from it).
const fn single(usage: &'static str) -> Shape<'static> {
    Shape {
        usage,
        max_args: 1,
        props: &[],
        repeatable: &[],
        children: false,
    }
}
const EPOCH: Shape<'static> = single("epoch 1686355200");
const RUN: Shape<'static> = single("run \"COMMAND\"");
const SSH_KEY: Shape<'static> = single("ssh-key \"ssh-ed25519 AAAA… user@host\"");
/// `base` before its kind is known.
const BASE: Shape<'static> = single(
    "base \"debian\" suite=\"bookworm\"`, `base \"tar\" path=\"rootfs.tar\"` or `base \"image\" path=\"vm.qcow2\"",
);
const BASE_TAR: Shape<'static> = Shape {
    props: &["path"],
    ..single("base \"tar\" path=\"rootfs.tar\"")
};
const BASE_IMAGE: Shape<'static> = Shape {
    props: &["path", "url", "sha256", "root", "keep"],
    ..single("base \"image\" path=\"vm.qcow2\"` (or `url=\"https://…\" sha256=\"…\"`) `[root=\"/dev/...\"] [keep=\"logs ...\"]")
};
/// A distribution base (`base "debian"`, `base "ubuntu"`, …): the usage line is the
/// distribution's own ([`crate::distro::Distro::usage`]).
const BASE_DISTRO: Shape<'static> = Shape {
    props: &[
        "suite",
        "variant",
        "mirror",
        "components",
        "architecture",
        "keyring",
    ],
    ..single("base \"DISTRO\" suite=\"…\"")
};
const PACKAGES: Shape<'static> = Shape {
    max_args: MANY,
    ..single("packages \"NAME\" PACKAGE…")
};
const FILES: Shape<'static> = Shape {
    props: &["dest"],
    ..single("files \"overlay/\" [dest=\"/\"]")
};
const USER: Shape<'static> = Shape {
    props: &["groups", "ssh-key", "password-hash", "sudo", "shell"],
    repeatable: &["ssh-key"],
    children: true,
    ..single("user \"NAME\" [groups=\"sudo adm\"] [ssh-key=\"…\"] [password-hash=\"…\"] [sudo=#true] [shell=\"/bin/bash\"]")
};
/// `element` before its parameters are known.
const ELEMENT: Shape<'static> = single("element \"NAME\" [PARAM=\"VALUE\" …]");
const BOOTLOADER: Shape<'static> = Shape {
    props: &["cmdline", "secure-boot"],
    ..single("bootloader \"grub-efi\"|\"grub-bios\"|\"hybrid\" [cmdline=\"…\"] [secure-boot=#true]")
};
const OUTPUT: Shape<'static> = Shape {
    max_args: MANY,
    props: &["compress"],
    ..single("output \"qcow2\" \"raw\" \"tar\" \"partition\" \"vmdk\" \"vdi\" \"vhdx\" \"vhd\" [compress=#true|\"zlib\"|\"zstd\"]")
};

/// Bootloader kinds by name.
pub(crate) const BOOTLOADERS: [(&str, BootloaderKind); 3] = [
    ("grub-efi", BootloaderKind::GrubEfi),
    ("grub-bios", BootloaderKind::GrubBios),
    ("hybrid", BootloaderKind::Hybrid),
];

/// Output formats by name.
pub(crate) const OUTPUTS: [(&str, OutputFormat); 8] = [
    ("tar", OutputFormat::Tar),
    ("raw", OutputFormat::Raw),
    ("qcow2", OutputFormat::Qcow2 { compressed: false }),
    ("partition", OutputFormat::Partition),
    ("vmdk", OutputFormat::Vmdk),
    ("vdi", OutputFormat::Vdi),
    ("vhdx", OutputFormat::Vhdx),
    ("vhd", OutputFormat::Vhd),
];

/// qcow2 cluster compression by name (`compress="zstd"`); `#true` is zlib.
const QCOW2_COMPRESSION: [(&str, OutputFormat); 2] = [
    ("zlib", OutputFormat::Qcow2 { compressed: true }),
    ("zstd", OutputFormat::Qcow2Zstd),
];

/// `compress=`: a boolean (`#true`: zlib) or the name of a compression.
enum Compress {
    Bool(bool),
    Name(String),
}

impl FromValue for Compress {
    const EXPECTED: &'static str = "a boolean or a compression name";
    const HINT: &'static str =
        "write `compress=#true` (zlib), `compress=\"zlib\"` or `compress=\"zstd\"`";
    fn from_value(value: &kdl::KdlValue) -> Option<Self> {
        match value {
            kdl::KdlValue::Bool(b) => Some(Compress::Bool(*b)),
            kdl::KdlValue::String(s) => Some(Compress::Name(s.clone())),
            _ => None,
        }
    }
}

/// mmdebstrap variants.
const VARIANTS: &[&str] = &[
    "extract",
    "custom",
    "essential",
    "apt",
    "minbase",
    "buildd",
    "required",
    "important",
    "standard",
];

/// Reads every `image` and `template` of every parsed file, in order.
pub(crate) fn read_decls(files: &[SourceFile], problems: &mut Problems) -> Vec<Decl> {
    let mut decls = Vec::new();
    for file in files {
        let Some(doc) = &file.doc else { continue };
        let mut cx = Cx {
            file: &file.info,
            problems,
        };
        for node in doc.nodes() {
            match node.name().value() {
                "import" => {} // read when loading
                "image" => decls.extend(read_decl(&mut cx, node, true)),
                "template" => decls.extend(read_decl(&mut cx, node, false)),
                name => {
                    let help = if IMAGE_NODES.contains(&name) {
                        format!("`{name}` belongs inside an `image \"NAME\" {{ … }}` or `template \"NAME\" {{ … }}` block")
                    } else {
                        did_you_mean(name, TOP_NODES.iter().copied())
                    };
                    cx.report(SpecError::UnknownNode {
                        src: cx.src(),
                        span: node.name().span(),
                        name: name.to_string(),
                        place: "at the top level".to_string(),
                        help,
                    });
                }
            }
        }
    }
    decls
}

fn read_decl(cx: &mut Cx<'_>, node: &KdlNode, buildable: bool) -> Option<Decl> {
    let shape = if buildable { &IMAGE } else { &TEMPLATE };
    cx.check_shape(node, shape);
    let name = cx.arg::<String>(node, shape, 0, "a name")?;
    check_simple_name(cx, &name, "image name");
    let mut decl = Decl {
        buildable,
        name,
        file: cx.file.id,
        extends: cx.prop(node, "extends"),
        epoch: None,
        base: None,
        layers: Vec::new(),
        bootloader: None,
        disk: None,
        outputs: None,
    };
    // The first layer node, for `base` must come first.
    let mut first_layer: Option<&str> = None;
    for child in children(node) {
        let kind = child.name().value();
        if let Some((_, read)) = LAYERS.iter().find(|(name, _)| *name == kind) {
            decl.layers.extend(cx.clean(|cx| read(cx, child)));
            first_layer.get_or_insert(kind);
            continue;
        }
        match kind {
            "epoch" => set_once(cx, &mut decl.epoch, child, read_epoch),
            "base" => {
                if let Some(after) = first_layer {
                    cx.report(SpecError::BaseNotFirst {
                        src: cx.src(),
                        span: child.name().span(),
                        label: format!("comes after `{after}`"),
                        help:
                            "move `base` above the other layers: the root filesystem starts from it"
                                .to_string(),
                    });
                }
                set_once(cx, &mut decl.base, child, read_base)
            }
            "bootloader" => set_once(cx, &mut decl.bootloader, child, read_bootloader),
            "disk" => set_once(cx, &mut decl.disk, child, disk::read_disk),
            "output" => set_once(cx, &mut decl.outputs, child, read_outputs),
            _ => {
                let place = format!("in `{}`", node_name(node));
                cx.unknown_node(child, &place, IMAGE_NODES);
            }
        }
    }
    Some(decl)
}

/// Reads a node that a declaration may give once.
fn set_once<T>(
    cx: &mut Cx<'_>,
    slot: &mut Option<Own<T>>,
    node: &KdlNode,
    read: fn(&mut Cx<'_>, &KdlNode) -> Option<T>,
) {
    let span = node.name().span();
    if let Some(first) = slot {
        cx.report(SpecError::DuplicateNode {
            src: cx.src(),
            first: first.span,
            second: span,
            node: node_name(node),
        });
        return;
    }
    let value = cx.clean(|cx| read(cx, node));
    *slot = Some(Own { span, value });
}

fn read_epoch(cx: &mut Cx<'_>, node: &KdlNode) -> Option<i64> {
    cx.check_shape(node, &EPOCH);
    let epoch = cx.arg::<i128>(node, &EPOCH, 0, "a time in unix seconds")?;
    let value = i64::try_from(epoch.value).ok().filter(|e| *e >= 0);
    if value.is_none() {
        cx.bad_value(
            epoch.span,
            format!("epoch `{}` is out of range", epoch.value),
            "not a unix time",
            "give the time in seconds since 1970-01-01 UTC, e.g. `1686355200` (2023-06-10)",
        );
    }
    value
}

/// A `keyring` larger than this is refused.
const MAX_KEYRING_BYTES: u64 = 16 << 20;

/// What `base "KIND"` names.
#[derive(Clone, Copy)]
enum BaseKind {
    Distro(&'static Distro),
    Tar,
    Image,
}

fn read_base(cx: &mut Cx<'_>, node: &KdlNode) -> Option<Base> {
    let kind = cx.arg::<String>(
        node,
        &BASE,
        0,
        "a kind (`debian`, `ubuntu`, `tar` or `image`)",
    )?;
    // Every registered distribution, then `tar` and `image`.
    let mut kinds: Vec<(&str, BaseKind)> = crate::distro::FAMILIES
        .iter()
        .flat_map(|f| f.distros())
        .map(|d| (d.name, BaseKind::Distro(d)))
        .collect();
    kinds.push(("tar", BaseKind::Tar));
    kinds.push(("image", BaseKind::Image));
    match cx.choice(&kind, "base", &kinds)? {
        BaseKind::Tar => {
            cx.check_shape(node, &BASE_TAR);
            let usage = format!("write it as `{}`", BASE_TAR.usage);
            let path = cx.required_prop::<String>(node, "path", usage)?;
            let path = resolve_path(cx, &path, Need::File, Confined::Yes)?;
            Some(Base::Tar { path })
        }
        BaseKind::Image => read_image(cx, node),
        BaseKind::Distro(distro) => read_debian(cx, node, distro),
    }
}

/// `base "image"`: a disk file (any that `qemu-img` reads; what it holds is checked when the
/// step runs), the root to take, the generalisations to skip.
fn read_image(cx: &mut Cx<'_>, node: &KdlNode) -> Option<Base> {
    cx.check_shape(node, &BASE_IMAGE);
    let path = cx.prop::<String>(node, "path");
    let url = cx.prop::<String>(node, "url");
    let sha256 = cx.prop::<String>(node, "sha256");
    let root = cx.prop::<String>(node, "root");
    let keep = cx.prop::<String>(node, "keep");
    if let Some(root) = root
        .as_ref()
        .filter(|r| !r.value.starts_with("/dev/") && !r.value.starts_with("btrfsvol:/dev/"))
    {
        cx.bad_value(
            root.span,
            format!("root `{}` is not a device", root.value),
            "not a /dev/ path",
            "name the root filesystem's device as the import's error lists them, e.g. `/dev/sda2`, `/dev/cl/root` or `btrfsvol:/dev/sda2/root`",
        );
    }
    let mut kept = Vec::new();
    if let Some(keep) = &keep {
        let names = CLEANINGS.iter().map(|(n, _)| *n);
        for word in keep.value.split_whitespace() {
            if names.clone().any(|n| n == word) {
                kept.push(word.to_string());
            } else {
                let w = Spanned {
                    value: word.to_string(),
                    span: keep.span,
                };
                cx.unknown_value(&w, "cleaning", names.clone());
            }
        }
    }
    kept.sort();
    kept.dedup();
    let source = match (path, url) {
        (Some(path), None) => {
            if let Some(sha) = &sha256 {
                cx.bad_value(
                    sha.span,
                    "`sha256` goes with `url`".into(),
                    "not for a local disk",
                    "a local disk's content is hashed by imgspec: leave `sha256` out",
                );
            }
            DiskSource::Path(resolve_path(cx, &path, Need::File, Confined::No)?)
        }
        (None, Some(url)) => {
            if !["http://", "https://"]
                .iter()
                .any(|p| url.value.starts_with(p))
            {
                cx.bad_value(
                    url.span,
                    format!("url `{}` is not an http(s) URL", url.value),
                    "not http(s)",
                    "write the image's download URL, e.g. `https://cloud.example/images/disk.qcow2`; a disk on this machine is `path=`",
                );
                return None;
            }
            let Some(sha) = sha256 else {
                cx.report(SpecError::MissingProperty {
                    src: cx.src(),
                    span: url.span,
                    node: "base".into(),
                    key: "sha256".into(),
                    help: "a downloaded disk is checked against the SHA-256 its publisher gives (the `CHECKSUM` file beside it): write `sha256=\"…\"`".into(),
                });
                return None;
            };
            if sha.value.len() != 64 || !sha.value.bytes().all(|b| b.is_ascii_hexdigit()) {
                cx.bad_value(
                    sha.span,
                    format!("`{}` is not a SHA-256", sha.value),
                    "not 64 hex digits",
                    "copy the image's SHA-256 from its publisher's checksum file: 64 hexadecimal digits",
                );
                return None;
            }
            DiskSource::Url {
                url: url.value,
                sha256: sha.value.to_ascii_lowercase(),
            }
        }
        (Some(_), Some(url)) => {
            cx.bad_value(
                url.span,
                "`path` and `url` both given".into(),
                "one disk, two sources",
                "a disk on this machine is `path=`, a published one `url=` with `sha256=`: keep one",
            );
            return None;
        }
        (None, None) => {
            cx.report(SpecError::MissingProperty {
                src: cx.src(),
                span: node.name().span(),
                node: "base".into(),
                key: "path".into(),
                help: format!("write it as `{}`", BASE_IMAGE.usage),
            });
            return None;
        }
    };
    Some(Base::Image(DiskImage {
        source,
        root: root.map(|r| r.value),
        keep: kept,
    }))
}

/// `base "debian"` and `base "ubuntu"`: the same options; Ubuntu has other default
/// components. Without `mirror`, the build takes the host's apt sources, which must then be of
/// the same distribution (checked when the step runs).
fn read_debian(cx: &mut Cx<'_>, node: &KdlNode, distro: &Distro) -> Option<Base> {
    let shape = &Shape {
        usage: distro.usage,
        ..BASE_DISTRO
    };
    cx.check_shape(node, shape);
    let mirror = cx.prop::<String>(node, "mirror");
    let suite = cx.required_prop::<String>(node, "suite", format!("write it as `{}`", shape.usage));
    let variant = cx.prop::<String>(node, "variant");
    let components = cx.prop::<String>(node, "components");
    let architecture = cx.prop::<String>(node, "architecture");
    let keyring = cx.prop::<String>(node, "keyring");

    if let Some(suite) = &suite {
        let help = "a suite is a codename or alias: `bookworm`, `stable`, `noble`";
        check_word(cx, suite, "suite", help);
    }
    if let Some(variant) = variant
        .as_ref()
        .filter(|v| !VARIANTS.contains(&v.value.as_str()))
    {
        cx.unknown_value(variant, "variant", VARIANTS.iter().copied());
    }
    if let Some(mirror) = &mirror {
        if !["http://", "https://", "file:/"]
            .iter()
            .any(|p| mirror.value.starts_with(p))
        {
            cx.bad_value(
                mirror.span,
                format!("mirror `{}` is not a URL", mirror.value),
                "not an http(s) or file URL",
                "write the archive's URL, e.g. `http://mirror.example/debian`",
            );
        }
    }
    if let Some(components) = components.as_ref().filter(|c| c.value.trim().is_empty()) {
        cx.bad_value(
            components.span,
            "`components` is empty".to_string(),
            "no component",
            "list the archive areas separated by spaces, e.g. `components=\"main contrib\"`",
        );
    }
    if let Some(architecture) = &architecture {
        let help = "write a Debian architecture name, e.g. `amd64` or `arm64`";
        check_word(cx, architecture, "architecture", help);
    }
    let keyring = match &keyring {
        Some(keyring) => {
            let path = resolve_path(cx, keyring, Need::File, Confined::No)?;
            // Planning hashes it: a keyring is kilobytes, `/proc/kcore` would never end.
            let size = std::fs::metadata(&path).map_or(u64::MAX, |m| m.len());
            if size > MAX_KEYRING_BYTES {
                cx.bad_value(
                    keyring.span,
                    format!("keyring `{}` is larger than 16MiB", keyring.value),
                    "not a keyring",
                    "name an OpenPGP keyring file (`.gpg` or `.asc`), e.g. `/usr/share/keyrings/debian-archive-keyring.gpg`",
                );
                return None;
            }
            Some(path)
        }
        None => None,
    };
    let default_components = distro.default_components;
    Some(Base::Debian(Debian {
        distro: distro.name.to_string(),
        suite: suite?.value,
        variant: variant.map_or_else(|| "minbase".to_string(), |v| v.value),
        mirror: mirror.map(|m| m.value),
        components: words(&components.map_or_else(|| default_components.to_string(), |c| c.value)),
        architecture: architecture.map_or_else(|| "amd64".to_string(), |a| a.value),
        keyring,
    }))
}

fn read_packages(cx: &mut Cx<'_>, node: &KdlNode) -> Option<Layer> {
    cx.check_shape(node, &PACKAGES);
    let name = cx.arg::<String>(node, &PACKAGES, 0, "a name for the package set")?;
    check_simple_name(cx, &name, "package set name");
    let packages = cx.args_from::<String>(node, 1);
    if arg_count(node) < 2 {
        cx.missing_argument(node, &PACKAGES, "at least one package");
    }
    for package in &packages {
        if !is_package_name(&package.value) {
            cx.bad_value(
                package.span,
                format!("`{}` is not a Debian package name", package.value),
                "not a package name",
                "package names are lowercase letters, digits, `+`, `-` and `.`, at least two characters, optionally followed by `:ARCH`",
            );
        }
    }
    let mut packages: Vec<String> = packages.into_iter().map(|p| p.value).collect();
    packages.sort();
    packages.dedup();
    Some(Layer::Packages(Packages {
        name: name.value,
        packages,
    }))
}

fn read_files(cx: &mut Cx<'_>, node: &KdlNode) -> Option<Layer> {
    cx.check_shape(node, &FILES);
    let source = cx.arg::<String>(node, &FILES, 0, "the folder to copy into the image")?;
    let dest = match cx.prop::<String>(node, "dest") {
        Some(dest) => absolute_path(cx, &dest, "dest", "/etc/ssh")?,
        None => "/".to_string(),
    };
    let path = resolve_path(cx, &source, Need::Folder, Confined::Yes)?;
    Some(Layer::Files(Files {
        source: path,
        source_text: source.value,
        dest,
    }))
}

fn read_run(cx: &mut Cx<'_>, node: &KdlNode) -> Option<Layer> {
    cx.check_shape(node, &RUN);
    let command = cx.arg::<String>(node, &RUN, 0, "a command")?;
    if command.value.trim().is_empty() {
        cx.bad_value(
            command.span,
            "`run` has an empty command".to_string(),
            "empty",
            "write the shell command to run inside the image root, e.g. `run \"systemctl enable ssh\"`",
        );
        return None;
    }
    Some(Layer::Run(Run {
        command: command.value,
    }))
}

fn read_user(cx: &mut Cx<'_>, node: &KdlNode) -> Option<Layer> {
    cx.check_shape(node, &USER);
    let name = cx.arg::<String>(node, &USER, 0, "a user name")?;
    check_user_name(cx, &name, "user name");
    let groups = cx.prop::<String>(node, "groups");
    let mut ssh_keys = cx.props_all::<String>(node, "ssh-key");
    for child in children(node) {
        if child.name().value() == "ssh-key" {
            cx.check_shape(child, &SSH_KEY);
            ssh_keys.extend(cx.arg::<String>(child, &SSH_KEY, 0, "a public key"));
        } else {
            cx.unknown_node(child, "in `user`", &["ssh-key"]);
        }
    }
    let password_hash = cx.prop::<String>(node, "password-hash");
    let sudo = cx.prop::<bool>(node, "sudo");
    let shell = cx.prop::<String>(node, "shell");

    let groups: Vec<Spanned<String>> = groups.map_or_else(Vec::new, |g| {
        words(&g.value)
            .into_iter()
            .map(|value| Spanned {
                value,
                span: g.span,
            })
            .collect()
    });
    for group in &groups {
        check_user_name(cx, group, "group name");
    }
    for key in &ssh_keys {
        if key.value.split_whitespace().count() < 2 || key.value.contains('\n') {
            cx.bad_value(
                key.span,
                "this does not look like an SSH public key".to_string(),
                "not a public key",
                "paste the whole line of the `.pub` file: `ssh-ed25519 AAAA… user@host`",
            );
        }
    }
    if let Some(hash) = &password_hash {
        if hash.value.is_empty() || hash.value.contains([':', '\n', ' ']) {
            cx.bad_value(
                hash.span,
                "`password-hash` is not a crypt(3) hash".to_string(),
                "not a password hash",
                "give a hash as `mkpasswd -m sha-512` prints it, or leave `password-hash` out to lock the password",
            );
        }
    }
    let shell = match shell {
        Some(shell) => absolute_path(cx, &shell, "shell", "/bin/bash")?,
        None => "/bin/bash".to_string(),
    };
    Some(Layer::User(User {
        name: name.value,
        groups: groups.into_iter().map(|g| g.value).collect(),
        ssh_keys: ssh_keys.into_iter().map(|k| k.value).collect(),
        password_hash: password_hash.map(|h| h.value),
        sudo: sudo.is_some_and(|s| s.value),
        shell,
    }))
}

fn read_element(cx: &mut Cx<'_>, node: &KdlNode) -> Option<Layer> {
    let name = cx.arg::<String>(node, &ELEMENT, 0, "the name of an element")?;
    let Some(definition) = element::find(&name.value) else {
        cx.unknown_value(&name, "element", ELEMENTS.iter().map(|d| d.name));
        return None;
    };
    let names: Vec<&str> = definition.params.iter().map(|p| p.name).collect();
    cx.check_shape(
        node,
        &Shape {
            props: &names,
            ..ELEMENT
        },
    );
    let mut values = BTreeMap::new();
    let mut spans = BTreeMap::new();
    let mut complete = true;
    for param in definition.params {
        let key = param.name;
        let value = if param.required {
            let help = format!(
                "element `{}` needs `{key}`: write `element \"{}\" {key}=\"…\"`",
                name.value, name.value
            );
            cx.required_prop::<Scalar>(node, key, help)
        } else {
            cx.prop::<Scalar>(node, key)
        };
        match value {
            Some(value) => {
                spans.insert(key, value.span);
                values.insert(key.to_string(), value.value.0);
            }
            None => complete &= !param.required,
        }
    }
    if !complete {
        return None; // reported
    }
    match element::Configured::new(definition.name, values) {
        Ok(configured) => Some(Layer::Element(configured)),
        Err(refused) => {
            for e in refused {
                let span = e
                    .param
                    .as_deref()
                    .and_then(|p| spans.get(p).copied())
                    .unwrap_or_else(|| node.name().span());
                let message = match &e.param {
                    Some(p) => format!("`{p}` of element `{}`: {}", definition.name, e.message),
                    None => e.message,
                };
                cx.report(SpecError::BadElementParam {
                    src: cx.src(),
                    span,
                    message,
                    label: e.label,
                    help: e.help,
                });
            }
            None
        }
    }
}

fn read_bootloader(cx: &mut Cx<'_>, node: &KdlNode) -> Option<Bootloader> {
    cx.check_shape(node, &BOOTLOADER);
    let kind = cx.arg::<String>(node, &BOOTLOADER, 0, "a kind")?;
    let kind = cx.choice(&kind, "bootloader", &BOOTLOADERS);
    let cmdline = cx.prop::<String>(node, "cmdline");
    let secure_boot = cx.prop::<bool>(node, "secure-boot");
    let kind = kind?;
    if let (Some(sb), BootloaderKind::GrubBios) = (&secure_boot, kind) {
        if sb.value {
            cx.bad_value(
                sb.span,
                "Secure Boot is a UEFI feature: `grub-bios` boots under legacy BIOS only".into(),
                "no UEFI side to sign",
                "use `bootloader \"grub-efi\" secure-boot=#true` (or `\"hybrid\"`, whose UEFI side is signed), or remove `secure-boot`",
            );
        }
    }
    Some(Bootloader {
        kind,
        cmdline: cmdline.map_or_else(|| DEFAULT_CMDLINE.to_string(), |c| c.value),
        secure_boot: secure_boot.is_some_and(|s| s.value),
    })
}

fn read_outputs(cx: &mut Cx<'_>, node: &KdlNode) -> Option<Vec<Spanned<OutputFormat>>> {
    cx.check_shape(node, &OUTPUT);
    let formats = cx.args_from::<String>(node, 0);
    // What `qcow2` becomes: plain, zlib or zstd.
    let compress = cx.prop::<Compress>(node, "compress");
    if let Some(c) = &compress {
        if !formats.iter().any(|f| f.value == "qcow2") {
            cx.bad_value(
                c.span,
                "`compress` applies to `qcow2` outputs only".into(),
                "no qcow2 output here",
                "the other formats are written as they are: remove `compress`, or add \"qcow2\"",
            );
        }
    }
    let qcow2 = match compress {
        None => OutputFormat::Qcow2 { compressed: false },
        Some(Spanned {
            value: Compress::Bool(b),
            ..
        }) => OutputFormat::Qcow2 { compressed: b },
        Some(Spanned {
            value: Compress::Name(name),
            span,
        }) => cx
            .choice(
                &Spanned { value: name, span },
                "qcow2 compression",
                &QCOW2_COMPRESSION,
            )
            .unwrap_or(OutputFormat::Qcow2 { compressed: false }),
    };
    if arg_count(node) == 0 {
        cx.missing_argument(node, &OUTPUT, "at least one format");
    }
    let mut outputs: Vec<Spanned<OutputFormat>> = formats
        .iter()
        .filter_map(|f| {
            let value = match cx.choice(f, "output format", &OUTPUTS)? {
                OutputFormat::Qcow2 { .. } => qcow2,
                other => other,
            };
            Some(Spanned {
                value,
                span: f.span,
            })
        })
        .collect();
    outputs.sort_by_key(|o| o.value);
    outputs.dedup_by_key(|o| o.value);
    Some(outputs)
}
