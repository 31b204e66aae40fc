//! Which local program an image is.
//!
//! The node agent pulls no image. An image's *repository* (its reference
//! without `:tag` or `@digest`, normalized as Docker does: `nginx:1.25` is
//! `docker.io/library/nginx`) maps to an [`Image`]: the `ENTRYPOINT`, `CMD`
//! and `USER` of its configuration, and for each in-image program the local
//! program that stands for it. Every tag of a repository is the same image.
//!
//! [`ImageMap::builtin`] knows the images of Trellis (see the `Dockerfile`);
//! users add theirs with a YAML file ([`ImageMap::extend_from_yaml`]):
//!
//! ```yaml
//! images:
//!   - image: example.com/team/app       # a repository: no tag, no digest
//!     entrypoint: [/app/server]         # default: none
//!     cmd: [--port, "8080"]             # default: none
//!     user: 65532                       # the image's USER; default: none (root)
//!     programs:                         # in-image absolute path: local absolute path
//!       /app/server: /usr/local/bin/app-server
//!       /bin/sh: /bin/sh
//! ```
//!
//! [`ImageMap::resolve`] applies Kubernetes' rules for `command` and `args`
//! (as containerd does) and finds the program to run.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use trellis_core::contract::PROXY_UID;

/// Where users read how to map an image to local programs.
pub const IMAGES_DOC: &str = "docs/node-agent.md, section \"Images\"";

/// The `PATH` of an image that sets none (containerd's default): searched
/// for a bare program name, and a container's `PATH` unless it sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The registry of Trellis's own images.
const BUILTIN_REGISTRY: &str = "ghcr.io/trellis-mesh";

/// Trellis's images, as the `Dockerfile` builds them: name, `USER`, `CMD`.
/// Each has one program, `/usr/local/bin/NAME`, its `ENTRYPOINT`.
/// `trellis-app` is the test program the examples run.
const BUILTIN: [(&str, Option<u32>, &[&str]); 6] = [
    ("trellis-proxy", Some(PROXY_UID), &[]),
    ("trellis-identity", Some(65532), &[]),
    ("trellis-controller", Some(65532), &[]),
    ("trellis-injector", Some(65532), &[]),
    ("trellis-cni", None, &["install"]),
    ("trellis-app", None, &[]),
];

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// An image's repository, normalized: `docker.io/library/nginx`,
/// `localhost:5000/app`, `ghcr.io/trellis-mesh/trellis-proxy`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Repository(String);

impl Repository {
    /// The repository of an image reference (`name[:tag][@digest]`).
    pub fn of(image: &str) -> Result<Self, ImageError> {
        parse_reference(image)
            .map(|r| r.repository)
            .map_err(|why| ImageError::InvalidName {
                image: image.to_owned(),
                why,
            })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One image: what its configuration runs, and its programs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    /// `ENTRYPOINT`: an in-image program and its first arguments.
    pub entrypoint: Vec<String>,
    /// `CMD`: arguments after the entrypoint (or the program, without one).
    pub cmd: Vec<String>,
    /// `USER`, when the image sets one: the uid a container runs as unless
    /// its security context says otherwise.
    pub user: Option<u32>,
    /// In-image absolute path → the local program that stands for it.
    pub programs: BTreeMap<String, PathBuf>,
}

/// What to run for a container: a local program and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The image's `USER`.
    pub user: Option<u32>,
}

/// The images this node can run, by repository.
#[derive(Clone, Debug, Default)]
pub struct ImageMap {
    images: BTreeMap<Repository, Image>,
}

impl ImageMap {
    /// Trellis's images, whose programs are in `bin_dir`.
    pub fn builtin(bin_dir: &Path) -> Self {
        let images = BUILTIN
            .iter()
            .map(|&(name, user, cmd)| {
                let in_image = format!("/usr/local/bin/{name}");
                let image = Image {
                    entrypoint: vec![in_image.clone()],
                    cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
                    user,
                    programs: BTreeMap::from([(in_image, bin_dir.join(name))]),
                };
                (Repository(format!("{BUILTIN_REGISTRY}/{name}")), image)
            })
            .collect();
        Self { images }
    }

    /// Adds (or replaces) the image of a repository.
    pub fn insert(&mut self, repository: Repository, image: Image) {
        self.images.insert(repository, image);
    }

    /// Adds the images of a YAML file (see the module doc); later entries
    /// replace earlier ones. On an error nothing is added.
    pub fn extend_from_yaml(&mut self, text: &str) -> Result<(), MapFileError> {
        let file: MapFile = serde_yaml_ng::from_str(text).map_err(MapFileError::Yaml)?;
        let entries = file
            .images
            .into_iter()
            .enumerate()
            .map(|(index, value)| map_entry(index, value))
            .collect::<Result<Vec<_>, _>>()?;
        self.images.extend(entries);
        Ok(())
    }

    /// The image an image reference names.
    pub fn get(&self, image: &str) -> Result<&Image, ImageError> {
        let repository = Repository::of(image)?;
        self.images
            .get(&repository)
            .ok_or_else(|| ImageError::NotMapped {
                image: image.to_owned(),
                repository,
            })
    }

    /// The program and arguments of a container of `image`, by Kubernetes'
    /// rules: a non-empty `command` replaces the `ENTRYPOINT` (and then the
    /// `CMD` is not used); non-empty `args` replace the `CMD`. The first
    /// word is the program: an absolute in-image path, or a bare name
    /// searched along [`DEFAULT_PATH`].
    pub fn resolve(
        &self,
        image: &str,
        command: Option<&[String]>,
        args: Option<&[String]>,
    ) -> Result<Resolved, ImageError> {
        let entry = self.get(image)?;
        let argv = entry.argv(command.unwrap_or_default(), args.unwrap_or_default());
        let Some((word, args)) = argv.split_first() else {
            return Err(ImageError::NoCommand {
                image: image.to_owned(),
            });
        };
        let program = entry
            .program(word)
            .ok_or_else(|| ImageError::ProgramNotInImage {
                image: image.to_owned(),
                program: word.clone(),
                programs: entry.programs.keys().cloned().collect(),
            })?;
        Ok(Resolved {
            program: program.clone(),
            args: args.to_vec(),
            user: entry.user,
        })
    }
}

impl Image {
    /// The command line, as containerd builds it from the container's
    /// `command` and `args` (empty means unset) and the image's config.
    fn argv(&self, command: &[String], args: &[String]) -> Vec<String> {
        if !command.is_empty() {
            return [command, args].concat();
        }
        let args = if args.is_empty() { &self.cmd } else { args };
        // An entrypoint of one empty word is Docker's "no entrypoint".
        let entrypoint: &[String] = match self.entrypoint.as_slice() {
            [only] if only.is_empty() => &[],
            words => words,
        };
        [entrypoint, args].concat()
    }

    /// The local program for an in-image program word.
    fn program(&self, word: &str) -> Option<&PathBuf> {
        if word.contains('/') {
            return self.programs.get(word);
        }
        DEFAULT_PATH
            .split(':')
            .find_map(|dir| self.programs.get(&format!("{dir}/{word}")))
    }
}

/// Why a container's image cannot run. [`ImageError::reason`] is the
/// waiting reason the pod shows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error(
        "image {image:?} has no local program: this node pulls no image, it runs \
         local programs for the image repositories it knows, and {repository} is not \
         one of them (see {IMAGES_DOC} in the Trellis docs)"
    )]
    NotMapped {
        image: String,
        repository: Repository,
    },
    #[error("invalid image name {image:?}: {why}")]
    InvalidName { image: String, why: &'static str },
    #[error(
        "image {image:?} has no program {program:?} (its programs: {}); \
         see {IMAGES_DOC} in the Trellis docs",
        programs.join(", ")
    )]
    ProgramNotInImage {
        image: String,
        program: String,
        programs: Vec<String>,
    },
    #[error(
        "image {image:?}: no command specified (the image has no entrypoint or cmd, \
         and the container sets no command or args)"
    )]
    NoCommand { image: String },
}

impl ImageError {
    /// The container's waiting reason, as kubelet names it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotMapped { .. } => "ErrImageNeverPull",
            Self::InvalidName { .. } => "InvalidImageName",
            Self::ProgramNotInImage { .. } | Self::NoCommand { .. } => "CreateContainerError",
        }
    }
}

/// A bad image map file.
#[derive(Debug, thiserror::Error)]
pub enum MapFileError {
    #[error("image map: {0}")]
    Yaml(serde_yaml_ng::Error),
    #[error("image map, images[{index}] ({image}): {why}")]
    Entry {
        index: usize,
        image: String,
        why: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MapFile {
    /// Read one by one, so an error can name its entry.
    images: Vec<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MapEntry {
    image: String,
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    user: Option<u32>,
    programs: BTreeMap<String, PathBuf>,
}

fn map_entry(
    index: usize,
    value: serde_yaml_ng::Value,
) -> Result<(Repository, Image), MapFileError> {
    let name = value
        .get("image")
        .and_then(|v| v.as_str())
        .unwrap_or("no image")
        .to_owned();
    let fail = |why: String| MapFileError::Entry {
        index,
        image: name.clone(),
        why,
    };
    let entry: MapEntry = serde_yaml_ng::from_value(value).map_err(|e| fail(e.to_string()))?;
    let reference = parse_reference(&entry.image).map_err(|why| fail(why.to_owned()))?;
    if reference.tagged {
        return Err(fail(format!(
            "a mapping is for every tag of a repository: write {} without a tag or digest",
            reference.repository
        )));
    }
    if entry.programs.is_empty() {
        return Err(fail("an image needs at least one program".into()));
    }
    for (in_image, local) in &entry.programs {
        if !in_image.starts_with('/') {
            return Err(fail(format!(
                "program {in_image:?} is not an absolute path"
            )));
        }
        if !local.is_absolute() {
            return Err(fail(format!(
                "the local program {} of {in_image} is not an absolute path",
                local.display()
            )));
        }
    }
    let image = Image {
        entrypoint: entry.entrypoint,
        cmd: entry.cmd,
        user: entry.user,
        programs: entry.programs,
    };
    Ok((reference.repository, image))
}

/// A parsed image reference.
struct Reference {
    repository: Repository,
    /// Whether it names a tag or a digest.
    tagged: bool,
}

/// Parses `name[:tag][@digest]` by the grammar of Docker's reference
/// package, and normalizes the name as `docker pull` does.
fn parse_reference(reference: &str) -> Result<Reference, &'static str> {
    if reference.is_empty() {
        return Err("empty reference");
    }
    if reference.len() == 64
        && reference
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err("a 64-character hexadecimal string is an image ID, not a name");
    }
    let (name_tag, digest) = match reference.split_once('@') {
        Some((name_tag, digest)) => (name_tag, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    let (domain, remainder) = split_domain(name_tag);
    let (path, tag) = match remainder.rsplit_once(':') {
        Some((path, tag)) => (path, Some(tag)),
        None => (remainder, None),
    };
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    if let Some(domain) = domain {
        check_domain(domain)?;
    }
    check_path(path)?;
    let written = domain.map_or(0, |d| d.len() + 1) + path.len();
    if written > NAME_TOTAL_LENGTH_MAX {
        return Err("repository name longer than 255 characters");
    }
    let domain = match domain {
        None | Some(LEGACY_DEFAULT_DOMAIN) => DEFAULT_DOMAIN,
        Some(domain) => domain,
    };
    let library = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        OFFICIAL_REPO_PREFIX
    } else {
        ""
    };
    Ok(Reference {
        repository: Repository(format!("{domain}/{library}{path}")),
        tagged: tag.is_some() || digest.is_some(),
    })
}

/// Docker's rule: the first component is a domain when it has a `.` or a
/// `:`, is `localhost`, or has upper-case letters.
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// `host[:port]`: a DNS name, an IPv4 address or a bracketed IPv6 address.
fn check_domain(domain: &str) -> Result<(), &'static str> {
    const BAD: &str = "invalid registry host";
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(BAD)?;
        v6.parse::<std::net::Ipv6Addr>().map_err(|_| BAD)?;
        match after {
            "" => return Ok(()),
            after => ("", Some(after.strip_prefix(':').ok_or(BAD)?)),
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err("invalid registry port");
        }
    }
    if !domain.starts_with('[') {
        let label_ok = |label: &str| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !host.split('.').all(label_ok) {
            return Err(BAD);
        }
    }
    Ok(())
}

/// Path components: lower-case letters and digits, joined by `.`, `_`,
/// `__` or dashes.
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("repository name must be lowercase");
    }
    for component in path.split('/') {
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let bytes = component.as_bytes();
        let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
            return Err("empty repository path component");
        };
        if !alnum(first) || !alnum(last) {
            return Err("repository path components start and end with a letter or digit");
        }
        for separator in component.split(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            let ok =
                matches!(separator, "" | "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
            if !ok {
                return Err("invalid character in repository name");
            }
        }
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), &'static str> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    match tag.as_bytes() {
        [first, rest @ ..]
            if word(*first)
                && rest.len() <= 127
                && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-') =>
        {
            Ok(())
        }
        _ => Err("invalid tag"),
    }
}

/// `algorithm:hex`, the hex at least 128 bits (a sha256 exactly 256).
fn check_digest(digest: &str) -> Result<(), &'static str> {
    const BAD: &str = "invalid digest";
    let (algorithm, hex) = digest.split_once(':').ok_or(BAD)?;
    let component_ok = |c: &str| {
        let mut bytes = c.bytes();
        bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
            && bytes.all(|b| b.is_ascii_alphanumeric())
    };
    if !algorithm.split(['+', '.', '-', '_']).all(component_ok) {
        return Err(BAD);
    }
    if hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BAD);
    }
    if algorithm == "sha256" && hex.len() != 64 {
        return Err(BAD);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
