//! Lexical path normalisation on raw bytes (paths from a tracee need not be UTF-8).

#[cfg(test)]
use std::ffi::OsString;
#[cfg(test)]
use std::os::unix::ffi::{OsStrExt, OsStringExt};
#[cfg(test)]
use std::path::{Path, PathBuf};

/// Joins `rel` onto the absolute `base` (ignored when `rel` is absolute) and removes `.`, `..`,
/// repeated and trailing slashes without touching the file system. `..` at the root stays at the
/// root, as the kernel does.
#[cfg(test)]
pub(crate) fn join_normalize(base: &Path, rel: &[u8]) -> PathBuf {
    let mut out = Vec::new();
    push_normalized(&mut out, base.as_os_str().as_bytes(), rel);
    PathBuf::from(OsString::from_vec(out))
}

/// Appends to `out` the normalised join of `rel` onto the absolute `base` (see
/// [`join_normalize`]); what `out` held before is left alone. Allocates only when `out` must
/// grow.
pub(crate) fn push_normalized(out: &mut Vec<u8>, base: &[u8], rel: &[u8]) {
    let start = out.len();
    let base = if rel.first() == Some(&b'/') {
        b""
    } else {
        base
    };
    for source in [base, rel] {
        for part in source.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    let last = out[start..].iter().rposition(|b| *b == b'/').unwrap_or(0);
                    out.truncate(start + last);
                }
                other => {
                    out.push(b'/');
                    out.extend_from_slice(other);
                }
            }
        }
    }
    if out.len() == start {
        out.push(b'/');
    }
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
        assert_eq!(n("/a/b", "../../../c/./d/.."), "/c");
    }

    #[test]
    fn appends_after_existing_bytes() {
        let mut out = b"/keep".to_vec();
        push_normalized(&mut out, b"/x/y", b"../../..");
        assert_eq!(out, b"/keep/");
        push_normalized(&mut out, b"/x", b"z/../w");
        assert_eq!(out, b"/keep//x/w");
    }

    #[test]
    fn keeps_non_utf8_bytes() {
        let p = join_normalize(Path::new("/d"), b"caf\xe9");
        assert_eq!(p.as_os_str().as_bytes(), b"/d/caf\xe9");
    }
}
