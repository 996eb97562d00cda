//! Fingerprints: what a task run depends on.
//!
//! A [`SpawnFingerprint`] describes how the process was started (the cache key); an
//! [`InputFingerprint`] records the state of every input path after the run and is re-checked on
//! lookup.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, Reader, Writer};
use crate::miss::MissReason;

/// A 32-byte BLAKE3 digest. Displays, serialises and parses as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// BLAKE3 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// The 64 lowercase hex digits of the digest.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits; `None` for anything else.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// Marker that starts the lossless encoding of a non-UTF-8 OS string. A NUL never occurs in a
/// Unix argument, environment name/value or path, so the encoding cannot collide with real text.
const NON_UTF8_MARKER: &str = "\0x:";

/// Encodes an OS string (argument, env name, path) as a `String`, losslessly: valid UTF-8 is kept
/// as is; anything else becomes `"\0x:"` followed by the hex of its raw bytes (Unix) so two
/// different byte strings never map to the same text. Invert with [`os_string_from_lossless`].
pub fn lossless_string(s: &OsStr) -> String {
    match s.to_str() {
        Some(text) => text.to_owned(),
        None => format!("{NON_UTF8_MARKER}{}", hex::encode(os_bytes(s))),
    }
}

/// Inverse of [`lossless_string`]: text without the marker is returned as is; `None` when the
/// marker is followed by invalid hex.
pub fn os_string_from_lossless(s: &str) -> Option<OsString> {
    match s.strip_prefix(NON_UTF8_MARKER) {
        None => Some(OsString::from(s)),
        Some(h) => {
            let bytes = hex::decode(h).ok()?;
            Some(os_from_bytes(bytes))
        }
    }
}

#[cfg(unix)]
fn os_bytes(s: &OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    s.as_bytes().to_vec()
}

#[cfg(not(unix))]
fn os_bytes(s: &OsStr) -> Vec<u8> {
    s.to_string_lossy().into_owned().into_bytes()
}

#[cfg(unix)]
fn os_from_bytes(b: Vec<u8>) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    OsString::from_vec(b)
}

#[cfg(not(unix))]
fn os_from_bytes(b: Vec<u8>) -> OsString {
    OsString::from(String::from_utf8_lossy(&b).into_owned())
}

/// How one environment variable takes part in the cache key. Values are never stored, only
/// digests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EnvFingerprint {
    /// A declared (tracked) variable: its value is part of the key.
    Tracked {
        /// Hex BLAKE3 of the raw value bytes (byte-exact, non-UTF-8 included).
        digest: String,
    },
    /// A pass-through variable: the child sees it, only its name is part of the key.
    PassThrough,
}

impl EnvFingerprint {
    /// A tracked variable with this value (hashed byte-exact on Unix).
    pub fn tracked(value: &OsStr) -> Self {
        Self::tracked_bytes(&os_bytes(value))
    }

    /// A tracked variable with these raw value bytes.
    pub fn tracked_bytes(value: &[u8]) -> Self {
        Self::Tracked {
            digest: Digest::of(value).to_hex(),
        }
    }
}

/// How a task process was spawned: the cache key. Two runs with equal spawn fingerprints are
/// candidates for each other's cache entries; the inputs then decide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnFingerprint {
    /// Working directory relative to the workspace root, `/`-separated (`""` for the root).
    pub cwd: String,
    /// The program as the command names it (e.g. `tsc`), not a resolved absolute path.
    pub program: String,
    /// Arguments after the program; non-UTF-8 ones encoded with [`lossless_string`].
    pub args: Vec<String>,
    /// Environment variables the child sees, by name (names encoded with [`lossless_string`]).
    pub env: BTreeMap<String, EnvFingerprint>,
    /// The configured inputs (globs, `auto`, …) in any JSON shape the caller chooses; compared by
    /// value (object key order does not matter).
    pub input_config: serde_json::Value,
    /// The configured outputs, like `input_config`.
    pub output_config: serde_json::Value,
    /// The original command text of this item (e.g. `tsc -p . --outDir dist`).
    pub command: String,
}

impl SpawnFingerprint {
    /// The cache key: BLAKE3 of a canonical, length-prefixed encoding of every field (JSON objects
    /// with sorted keys), so it is stable across processes and platforms.
    pub fn spawn_key(&self) -> Digest {
        let mut w = Writer::with_tag(b'S');
        w.str("baton-spawn-v1");
        w.str(&self.cwd);
        w.str(&self.program);
        w.varint(self.args.len() as u64);
        for a in &self.args {
            w.str(a);
        }
        w.varint(self.env.len() as u64);
        for (name, fp) in &self.env {
            w.str(name);
            match fp {
                EnvFingerprint::Tracked { digest } => {
                    w.u8(1);
                    w.str(digest);
                }
                EnvFingerprint::PassThrough => w.u8(2),
            }
        }
        canonical_json(&mut w, &self.input_config);
        canonical_json(&mut w, &self.output_config);
        w.str(&self.command);
        Digest::of(&w.buf)
    }

    /// The first difference between a previous spawn (`self`) and `current`, as a miss reason;
    /// `None` when they are equal.
    pub fn diff(&self, current: &SpawnFingerprint) -> Option<MissReason> {
        if self.command != current.command {
            return Some(MissReason::CommandChanged);
        }
        if self.cwd != current.cwd {
            return Some(MissReason::CwdChanged);
        }
        if self.program != current.program {
            return Some(MissReason::ProgramChanged);
        }
        if self.args != current.args {
            return Some(MissReason::ArgsChanged);
        }
        let names: std::collections::BTreeSet<&String> =
            self.env.keys().chain(current.env.keys()).collect();
        for name in names {
            match (self.env.get(name), current.env.get(name)) {
                (Some(_), None) => return Some(MissReason::EnvRemoved(name.clone())),
                (None, Some(_)) => return Some(MissReason::EnvAdded(name.clone())),
                (Some(a), Some(b)) if a != b => return Some(MissReason::EnvChanged(name.clone())),
                _ => {}
            }
        }
        if self.input_config != current.input_config {
            return Some(MissReason::InputConfigChanged);
        }
        if self.output_config != current.output_config {
            return Some(MissReason::OutputConfigChanged);
        }
        None
    }
}

fn canonical_json(w: &mut Writer, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Null => w.u8(b'n'),
        Value::Bool(b) => {
            w.u8(b'b');
            w.u8(u8::from(*b));
        }
        Value::Number(n) => {
            w.u8(b'#');
            w.str(&n.to_string());
        }
        Value::String(s) => {
            w.u8(b's');
            w.str(s);
        }
        Value::Array(items) => {
            w.u8(b'[');
            w.varint(items.len() as u64);
            for item in items {
                canonical_json(w, item);
            }
        }
        Value::Object(map) => {
            w.u8(b'{');
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            w.varint(keys.len() as u64);
            for k in keys {
                w.str(k);
                canonical_json(w, &map[k.as_str()]);
            }
        }
    }
}

/// The state of one input path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PathState {
    /// A file (symlinks followed) with this BLAKE3 content hash.
    File {
        /// BLAKE3 of the file's bytes.
        hash: Digest,
    },
    /// Nothing at this path (looked for, not found; includes dangling symlinks).
    Absent,
    /// A directory whose listing has this hash (see [`listing_hash`]).
    Dir {
        /// Hash of the sorted names and entry types.
        listing_hash: Digest,
    },
}

/// States of input paths, keyed by path relative to the workspace root, `/`-separated (non-UTF-8
/// names encoded with [`lossless_string`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFingerprint {
    /// Path → state, sorted by path.
    pub paths: BTreeMap<String, PathState>,
}

impl InputFingerprint {
    /// An empty fingerprint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of paths.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether no path is recorded.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Records (or replaces) the state of `path`.
    pub fn insert(&mut self, path: impl Into<String>, state: PathState) {
        self.paths.insert(path.into(), state);
    }

    /// The recorded state of `path`.
    pub fn get(&self, path: &str) -> Option<&PathState> {
        self.paths.get(path)
    }

    /// The first difference from a stored fingerprint (`self`) to `current`, comparing the two
    /// maps in path order: a path only in `current` (or absent → present) is `added`, one only in
    /// `self` (or present → absent) is `removed`, a changed state is `modified`.
    pub fn diff(&self, current: &InputFingerprint) -> Option<MissReason> {
        use std::cmp::Ordering::{Equal, Greater, Less};
        let mut a = self.paths.iter().peekable();
        let mut b = current.paths.iter().peekable();
        loop {
            let (path, stored, now) = match (a.peek(), b.peek()) {
                (None, None) => return None,
                (Some(&(pa, sa)), Some(&(pb, sb))) => match pa.cmp(pb) {
                    Equal => {
                        a.next();
                        b.next();
                        (pa, Some(*sa), Some(*sb))
                    }
                    Less => {
                        a.next();
                        (pa, Some(*sa), None)
                    }
                    Greater => {
                        b.next();
                        (pb, None, Some(*sb))
                    }
                },
                (Some(&(pa, sa)), None) => {
                    a.next();
                    (pa, Some(*sa), None)
                }
                (None, Some(&(pb, sb))) => {
                    b.next();
                    (pb, None, Some(*sb))
                }
            };
            if let Some(reason) = change(path, stored, now) {
                return Some(reason);
            }
        }
    }

    /// Records env variable `name` as an input with its current value in `env` (absent when
    /// unset). On lookup its current value comes from [`CurrentInputs`](crate::CurrentInputs)'s
    /// env; a change reads `env NAME changed` (or `added` / `removed`).
    pub fn insert_env(&mut self, env: &[(OsString, OsString)], name: &str) {
        self.paths
            .insert(env_input_key(name), env_input_state(env, name));
    }

    /// Records an env pattern as an input (every matching variable, byte-exact).
    pub fn insert_env_pattern(&mut self, env: &[(OsString, OsString)], pattern: &EnvPattern) {
        self.paths.insert(pattern.input_key(), pattern.state(env));
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_tag(b'I');
        w.varint(self.paths.len() as u64);
        for (path, state) in &self.paths {
            w.str(path);
            match state {
                PathState::File { hash } => {
                    w.u8(b'f');
                    w.digest(&hash.0);
                }
                PathState::Absent => w.u8(b'a'),
                PathState::Dir { listing_hash } => {
                    w.u8(b'd');
                    w.digest(&listing_hash.0);
                }
            }
        }
        w.buf
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::with_tag(buf, b'I')?;
        let n = r.varint()?;
        let mut paths = BTreeMap::new();
        for _ in 0..n {
            let path = r.str()?.to_owned();
            let state = match r.u8()? {
                b'f' => PathState::File {
                    hash: Digest(r.digest()?),
                },
                b'a' => PathState::Absent,
                b'd' => PathState::Dir {
                    listing_hash: Digest(r.digest()?),
                },
                _ => return Err(DecodeError::Invalid("unknown path state")),
            };
            paths.insert(path, state);
        }
        if !r.is_empty() {
            return Err(DecodeError::Invalid("trailing bytes"));
        }
        Ok(Self { paths })
    }
}

impl FromIterator<(String, PathState)> for InputFingerprint {
    fn from_iter<T: IntoIterator<Item = (String, PathState)>>(iter: T) -> Self {
        Self {
            paths: iter.into_iter().collect(),
        }
    }
}

impl Extend<(String, PathState)> for InputFingerprint {
    fn extend<T: IntoIterator<Item = (String, PathState)>>(&mut self, iter: T) {
        self.paths.extend(iter);
    }
}

/// The miss reason for one path whose state went from `stored` to `now` (`None` = not recorded /
/// not matched); `None` when unchanged. Env-derived keys give `env …` reasons.
pub(crate) fn change(
    path: &str,
    stored: Option<PathState>,
    now: Option<PathState>,
) -> Option<MissReason> {
    let present =
        |s: Option<PathState>| matches!(s, Some(PathState::File { .. } | PathState::Dir { .. }));
    let (stored_present, now_present) = (present(stored), present(now));
    if stored_present == now_present && (!stored_present || stored == now) {
        return None;
    }
    if let Some(name) = path.strip_prefix(ENV_INPUT_PREFIX) {
        let name = name.to_owned();
        return Some(match (stored_present, now_present) {
            (true, false) => MissReason::EnvRemoved(name),
            (false, true) => MissReason::EnvAdded(name),
            _ => MissReason::EnvChanged(name),
        });
    }
    if let Some(pattern) = path.strip_prefix(ENV_PATTERN_INPUT_PREFIX) {
        let shown = match pattern.split_once(':') {
            Some(("prefix", p)) => format!("{p}*"),
            Some((_, g)) => g.to_owned(),
            None => pattern.to_owned(),
        };
        return Some(MissReason::EnvChanged(shown));
    }
    Some(match (stored_present, now_present) {
        (true, false) => MissReason::Removed(path.to_owned()),
        (false, true) => MissReason::Added(path.to_owned()),
        _ => MissReason::Modified(path.to_owned()),
    })
}

/// Key prefix of an env variable recorded as an input (e.g. read by a tool through
/// `getEnv(name, {tracked: true})` after the run started): `"\0env:NAME"`. The NUL keeps such keys
/// apart from every workspace path.
pub const ENV_INPUT_PREFIX: &str = "\0env:";

/// Key prefix of an env pattern recorded as an input (`getEnvs(glob | {prefix})`):
/// `"\0envs:glob:PATTERN"` or `"\0envs:prefix:PREFIX"`.
pub const ENV_PATTERN_INPUT_PREFIX: &str = "\0envs:";

/// A set of env variables a tool asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EnvPattern {
    /// Names matching a glob (`VITE_*`; `globset` syntax, case-sensitive).
    Glob(String),
    /// Names starting with a prefix.
    Prefix(String),
}

impl EnvPattern {
    /// The fingerprint key of this pattern.
    pub fn input_key(&self) -> String {
        match self {
            Self::Glob(g) => format!("{ENV_PATTERN_INPUT_PREFIX}glob:{g}"),
            Self::Prefix(p) => format!("{ENV_PATTERN_INPUT_PREFIX}prefix:{p}"),
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        let rest = key.strip_prefix(ENV_PATTERN_INPUT_PREFIX)?;
        match rest.split_once(':')? {
            ("glob", g) => Some(Self::Glob(g.to_owned())),
            ("prefix", p) => Some(Self::Prefix(p.to_owned())),
            _ => None,
        }
    }

    /// Whether `name` (a [`lossless_string`]) belongs to the set. An invalid glob matches
    /// nothing.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Prefix(p) => name.starts_with(p.as_str()),
            Self::Glob(g) => globset::Glob::new(g)
                .map(|g| g.compile_matcher().is_match(name))
                .unwrap_or(false),
        }
    }

    /// The state of the set in `env`: a "file" whose hash covers every matching name and value
    /// (sorted by name, byte-exact values), so adding, removing or changing a match changes it.
    pub fn state(&self, env: &[(OsString, OsString)]) -> PathState {
        let matcher = match self {
            Self::Glob(g) => globset::Glob::new(g).ok().map(|g| g.compile_matcher()),
            Self::Prefix(_) => None,
        };
        let mut matching: Vec<(String, Vec<u8>)> = env
            .iter()
            .map(|(n, v)| (lossless_string(n), os_bytes(v)))
            .filter(|(n, _)| match (self, &matcher) {
                (Self::Prefix(p), _) => n.starts_with(p.as_str()),
                (Self::Glob(_), Some(m)) => m.is_match(n),
                (Self::Glob(_), None) => false,
            })
            .collect();
        matching.sort();
        matching.dedup_by(|a, b| a.0 == b.0);
        let mut h = blake3::Hasher::new();
        for (n, v) in &matching {
            h.update(&(n.len() as u64).to_le_bytes());
            h.update(n.as_bytes());
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v);
        }
        PathState::File {
            hash: h.finalize().into(),
        }
    }
}

/// The fingerprint key of env variable `name` as an input.
pub fn env_input_key(name: &str) -> String {
    format!("{ENV_INPUT_PREFIX}{name}")
}

/// The state of env variable `name` in `env`: `File { hash: BLAKE3(raw value) }` when set,
/// `Absent` when not.
pub fn env_input_state(env: &[(OsString, OsString)], name: &str) -> PathState {
    env.iter()
        .rev()
        .find(|(n, _)| lossless_string(n) == name)
        .map_or(PathState::Absent, |(_, v)| PathState::File {
            hash: Digest::of(&os_bytes(v)),
        })
}

/// The state of an env-derived input key (see [`ENV_INPUT_PREFIX`],
/// [`ENV_PATTERN_INPUT_PREFIX`]) in `env`; `None` for a workspace path.
pub fn env_key_state(env: &[(OsString, OsString)], key: &str) -> Option<PathState> {
    if let Some(name) = key.strip_prefix(ENV_INPUT_PREFIX) {
        return Some(env_input_state(env, name));
    }
    if key.starts_with(ENV_PATTERN_INPUT_PREFIX) {
        return Some(EnvPattern::from_key(key).map_or(PathState::Absent, |p| p.state(env)));
    }
    None
}

/// Whether `key` is an env-derived input key rather than a workspace path.
pub fn is_env_key(key: &str) -> bool {
    key.starts_with(ENV_INPUT_PREFIX) || key.starts_with(ENV_PATTERN_INPUT_PREFIX)
}

/// An input path could not be fingerprinted (other than not existing, which is
/// [`PathState::Absent`]).
#[derive(Debug, thiserror::Error)]
#[error("cannot fingerprint '{path}'")]
pub struct FingerprintError {
    /// The path as given (relative to the root).
    pub path: String,
    /// What failed.
    #[source]
    pub source: io::Error,
}

/// BLAKE3 of a file's bytes (symlinks followed).
///
/// Errors: any I/O error opening or reading the file.
pub fn hash_file(path: &Path) -> io::Result<Digest> {
    thread_local! {
        // Reused read buffer: zeroing 64 KiB per file would cost more than hashing a small one.
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 64 * 1024]);
    }
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        loop {
            let n = match file.read(&mut buf[..]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
        }
        Ok(())
    })?;
    Ok(hasher.finalize().into())
}

/// Hash of a directory listing: BLAKE3 over the entries sorted by name, each as a type byte
/// (`f` file, `d` directory, `l` symlink, `o` other), the name length (u64 LE) and the name bytes.
/// Detects added, removed and renamed entries, not content changes.
///
/// Errors: any I/O error reading the directory.
pub fn listing_hash(dir: &Path) -> io::Result<Digest> {
    Ok(listing_digest(&listing_entries(dir)?))
}

/// The sorted `(name bytes, type tag)` entries of `dir` that [`listing_hash`] hashes (tags:
/// `l` symlink, `d` directory, `f` file, `o` other).
pub(crate) fn listing_entries(dir: &Path) -> io::Result<Vec<(Vec<u8>, u8)>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let tag = if ty.is_symlink() {
            b'l'
        } else if ty.is_dir() {
            b'd'
        } else if ty.is_file() {
            b'f'
        } else {
            b'o'
        };
        entries.push((os_bytes(&entry.file_name()), tag));
    }
    entries.sort();
    Ok(entries)
}

/// The [`listing_hash`] of entries from [`listing_entries`].
pub(crate) fn listing_digest(entries: &[(Vec<u8>, u8)]) -> Digest {
    let mut hasher = blake3::Hasher::new();
    for (name, tag) in entries {
        hasher.update(&[*tag]);
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name);
    }
    hasher.finalize().into()
}

/// The current state of one path (symlinks followed): a file's content hash, a directory's
/// listing hash, or absent when nothing is there (`NotFound` or `NotADirectory`).
///
/// Errors: other I/O errors (e.g. permission denied).
pub fn path_state(path: &Path) -> io::Result<PathState> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if is_absent(&e) => return Ok(PathState::Absent),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        Ok(PathState::Dir {
            listing_hash: listing_hash(path)?,
        })
    } else {
        match hash_file(path) {
            Ok(hash) => Ok(PathState::File { hash }),
            Err(e) if is_absent(&e) => Ok(PathState::Absent),
            Err(e) => Err(e),
        }
    }
}

pub(crate) fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Joins a fingerprint key (relative, `/`-separated, possibly [`lossless_string`]-encoded) to
/// `root`.
pub fn key_to_path(root: &Path, key: &str) -> PathBuf {
    match os_string_from_lossless(key) {
        Some(os) => root.join(os),
        None => root.join(key),
    }
}

/// The fingerprint key of `path` (absolute, or relative to the current directory) relative to
/// `root`: `/`-separated, non-UTF-8 components encoded with [`lossless_string`]; `None` when the
/// path is not inside `root`. No filesystem access: both paths should be normalised already.
pub fn path_to_key(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(s) => parts.push(s),
            std::path::Component::CurDir => {}
            _ => return None,
        }
    }
    let joined: OsString = {
        let mut s = OsString::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                s.push("/");
            }
            s.push(p);
        }
        s
    };
    Some(lossless_string(&joined))
}

/// Runs `f` over `items` on up to `available_parallelism` threads (inline when there are few),
/// returning results in input order.
pub(crate) fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    const PER_THREAD_MIN: usize = 32;
    const CHUNK: usize = 16;
    // `available_parallelism` reads cgroup files on every call: ask once per process.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = cores.min(items.len().div_ceil(PER_THREAD_MIN));
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, R)>> = Mutex::new(Vec::with_capacity(items.len()));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut local = Vec::new();
                loop {
                    let start = next.fetch_add(CHUNK, Ordering::Relaxed);
                    if start >= items.len() {
                        break;
                    }
                    let end = (start + CHUNK).min(items.len());
                    for (i, item) in items[start..end].iter().enumerate() {
                        local.push((start + i, f(item)));
                    }
                }
                results
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend(local);
            });
        }
    });
    let mut results = results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    results.sort_unstable_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Fingerprints `paths` (keys relative to `root`, see [`key_to_path`]) with [`path_state`], in
/// parallel over the available cores.
///
/// Errors: the first path (in input order) that failed with something other than "not found".
pub fn fingerprint_paths<S: AsRef<str> + Sync>(
    root: &Path,
    paths: &[S],
) -> Result<InputFingerprint, FingerprintError> {
    let states = parallel_map(paths, |p| path_state(&key_to_path(root, p.as_ref())));
    let mut out = InputFingerprint::new();
    for (p, state) in paths.iter().zip(states) {
        match state {
            Ok(s) => out.insert(p.as_ref(), s),
            Err(source) => {
                return Err(FingerprintError {
                    path: p.as_ref().to_owned(),
                    source,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn() -> SpawnFingerprint {
        SpawnFingerprint {
            cwd: "packages/a".into(),
            program: "tsc".into(),
            args: vec!["-p".into(), ".".into()],
            env: BTreeMap::from([
                (
                    "NODE_ENV".into(),
                    EnvFingerprint::tracked(OsStr::new("production")),
                ),
                ("PATH".into(), EnvFingerprint::PassThrough),
            ]),
            input_config: serde_json::json!({"auto": true, "globs": ["src/**"]}),
            output_config: serde_json::json!(null),
            command: "tsc -p .".into(),
        }
    }

    #[test]
    fn spawn_key_is_stable_and_sensitive() {
        let a = spawn();
        assert_eq!(a.spawn_key(), spawn().spawn_key());
        let mut b = spawn();
        b.input_config = serde_json::json!({"globs": ["src/**"], "auto": true});
        assert_eq!(
            a.spawn_key(),
            b.spawn_key(),
            "object key order must not matter"
        );
        let mut c = spawn();
        c.args.push("x".into());
        assert_ne!(a.spawn_key(), c.spawn_key());
        assert_eq!(a.diff(&c), Some(MissReason::ArgsChanged));
        let mut d = spawn();
        d.env.insert("NODE_ENV".into(), EnvFingerprint::PassThrough);
        assert_ne!(a.spawn_key(), d.spawn_key());
        assert_eq!(a.diff(&d).unwrap().to_string(), "env NODE_ENV changed");
        // Field boundaries are length-prefixed: moving text between fields changes the key.
        let mut e = spawn();
        e.args = vec!["-p .".into()];
        assert_ne!(a.spawn_key(), e.spawn_key());
    }

    #[test]
    fn lossless_round_trip() {
        assert_eq!(lossless_string(OsStr::new("plain")), "plain");
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let raw = OsStr::from_bytes(b"a\xffb");
            let enc = lossless_string(raw);
            assert_ne!(enc, raw.to_string_lossy());
            assert_eq!(os_string_from_lossless(&enc).unwrap(), raw);
        }
    }

    #[test]
    fn input_diff_order_and_kinds() {
        let h = |b: &[u8]| PathState::File {
            hash: Digest::of(b),
        };
        let stored: InputFingerprint = [
            ("a".to_string(), h(b"1")),
            ("b".to_string(), h(b"2")),
            ("c".to_string(), PathState::Absent),
        ]
        .into_iter()
        .collect();
        let mut now = stored.clone();
        assert_eq!(stored.diff(&now), None);
        now.insert("b", h(b"3"));
        assert_eq!(stored.diff(&now).unwrap().to_string(), "'b' modified");
        now.insert("a", PathState::Absent);
        assert_eq!(stored.diff(&now).unwrap().to_string(), "'a' removed");
        let mut now = stored.clone();
        now.insert("c", h(b"x"));
        assert_eq!(stored.diff(&now).unwrap().to_string(), "'c' added");
        let mut now = stored.clone();
        now.insert("bb", h(b"x"));
        assert_eq!(stored.diff(&now).unwrap().to_string(), "'bb' added");
        let mut now = stored.clone();
        now.paths.remove("c");
        assert_eq!(
            stored.diff(&now),
            None,
            "absent and unrecorded are the same"
        );
        assert_eq!(InputFingerprint::decode(&stored.encode()).unwrap(), stored);
    }
}
