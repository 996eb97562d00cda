//! Lexical path normalisation on raw bytes (paths from a tracee need not be UTF-8).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Joins `rel` onto the absolute `base` (ignored when `rel` is absolute) and removes `.`, `..`,
/// repeated and trailing slashes without touching the file system. `..` at the root stays at the
/// root, as the kernel does.
pub(crate) fn join_normalize(base: &Path, rel: &[u8]) -> PathBuf {
    let mut parts: Vec<&[u8]> = Vec::new();
    let base = base.as_os_str().as_bytes();
    let sources: [&[u8]; 2] = if rel.first() == Some(&b'/') {
        [b"", rel]
    } else {
        [base, rel]
    };
    for source in sources {
        for part in source.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    parts.pop();
                }
                other => parts.push(other),
            }
        }
    }
    let mut out = Vec::with_capacity(base.len() + rel.len() + 1);
    for part in &parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(base: &str, rel: &str) -> String {
        join_normalize(Path::new(base), rel.as_bytes())
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn normalizes() {
        assert_eq!(n("/work/pkg", "src/a.ts"), "/work/pkg/src/a.ts");
        assert_eq!(n("/work/pkg", "./src/../b//c/"), "/work/pkg/b/c");
        assert_eq!(n("/work/pkg", "/etc/./hosts"), "/etc/hosts");
        assert_eq!(n("/", "../../x"), "/x");
        assert_eq!(n("/a", ".."), "/");
        assert_eq!(n("/a/b", ""), "/a/b");
    }

    #[test]
    fn keeps_non_utf8_bytes() {
        let p = join_normalize(Path::new("/d"), b"caf\xe9");
        assert_eq!(p.as_os_str().as_bytes(), b"/d/caf\xe9");
    }
}
