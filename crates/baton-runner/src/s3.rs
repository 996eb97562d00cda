//! A minimal S3 client (path-style, AWS Signature Version 4) for object-storage mounts, and the
//! mount sync: objects under the mount's prefix are copied into the workspace when a session is
//! created and, for writable mounts, copied back (and deleted objects removed) on close.
//!
//! Scope: plain `http://` endpoints (S3-compatible servers such as MinIO or moto; TLS is not
//! implemented yet), `ListObjectsV2`, `GetObject`, `PutObject`, `DeleteObject`, `CreateBucket`.
//! Protocol references: the Amazon S3 API reference and "Signature Version 4 signing process"
//! (AWS General Reference). Sync runs on *this* host through the session's own file API, so the
//! endpoint must be reachable from here, and it works for every provider.

use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{
    RunnerCommandRequest, RunnerError, RunnerFileReadRequest, RunnerFileWriteRequest, RunnerMount,
    RunnerMountKind, RunnerSession,
};

/// Where a mount's objects are: parsed from `s3://BUCKET/PREFIX?endpoint=http://HOST:PORT&region=R`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// `HOST:PORT` of the endpoint.
    pub host: String,
    /// Bucket.
    pub bucket: String,
    /// Key prefix: empty, or ending with `/`.
    pub prefix: String,
    /// Signing region (default `us-east-1`).
    pub region: String,
}

impl S3Location {
    /// Parses a mount URI (see the type docs; `endpoint` is required and must be `http://`).
    ///
    /// # Errors
    /// [`RunnerError::InvalidDestination`] for a malformed URI;
    /// [`RunnerError::Unsupported`] for a missing or `https://` endpoint.
    pub fn parse(uri: &str) -> Result<Self, RunnerError> {
        let bad = |why: &str| RunnerError::InvalidDestination(format!("s3 uri {uri:?}: {why}"));
        let rest = uri.strip_prefix("s3://").ok_or_else(|| bad("not s3://"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        let mut endpoint = None;
        let mut region = "us-east-1".to_string();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("endpoint", v)) => endpoint = Some(percent_decode(v)),
                Some(("region", v)) => region = percent_decode(v),
                _ => return Err(bad(&format!("unknown parameter {pair:?}"))),
            }
        }
        let endpoint = endpoint.ok_or_else(|| {
            RunnerError::unsupported("s3 mount without an http `endpoint` (AWS over https)", "s3")
        })?;
        let host = endpoint
            .strip_prefix("http://")
            .ok_or_else(|| RunnerError::unsupported("s3 over https", "s3"))?
            .trim_end_matches('/')
            .to_string();
        let mut prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        Ok(Self {
            host,
            bucket: bucket.to_string(),
            prefix,
            region,
        })
    }
}

/// An access key pair. The secret is kept in memory only.
#[derive(Clone)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Credentials {
    /// Parses a resolved secret of the form `ACCESS_KEY_ID:SECRET_ACCESS_KEY`.
    ///
    /// # Errors
    /// [`RunnerError::InvalidDestination`] without a `:` (the message never includes the value).
    pub fn parse(secret: &str) -> Result<Self, RunnerError> {
        let (id, key) = secret.split_once(':').ok_or_else(|| {
            RunnerError::InvalidDestination(
                "s3 credentials must be ACCESS_KEY_ID:SECRET_ACCESS_KEY".into(),
            )
        })?;
        Ok(Self {
            access_key_id: id.to_string(),
            secret_access_key: key.to_string(),
        })
    }
}

/// A client for one bucket; requests are signed when credentials are given, else anonymous.
#[derive(Debug, Clone)]
pub struct S3Client {
    location: S3Location,
    credentials: Option<S3Credentials>,
}

/// An S3 call that failed.
fn s3_error(what: &str, status: u16, body: &[u8]) -> RunnerError {
    RunnerError::Remote {
        what: "s3",
        message: format!(
            "{what}: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ),
    }
}

impl S3Client {
    /// A client for `location`.
    pub fn new(location: S3Location, credentials: Option<S3Credentials>) -> Self {
        Self {
            location,
            credentials,
        }
    }

    /// The location.
    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// `CreateBucket` (an existing bucket owned by us is fine).
    ///
    /// # Errors
    /// [`RunnerError::Remote`] on a non-2xx answer; I/O errors.
    pub async fn create_bucket(&self) -> Result<(), RunnerError> {
        let (status, body) = self.request("PUT", None, &[], &[]).await?;
        if (200..300).contains(&status) || status == 409 {
            Ok(())
        } else {
            Err(s3_error("create bucket", status, &body))
        }
    }

    /// Every key under the prefix (full keys), following continuation tokens.
    ///
    /// # Errors
    /// As [`S3Client::create_bucket`].
    pub async fn list(&self) -> Result<Vec<String>, RunnerError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type".to_string(), "2".to_string()),
                ("prefix".to_string(), self.location.prefix.clone()),
            ];
            if let Some(t) = &token {
                query.push(("continuation-token".into(), t.clone()));
            }
            let (status, body) = self.request("GET", None, &query, &[]).await?;
            if status != 200 {
                return Err(s3_error("list objects", status, &body));
            }
            let xml = String::from_utf8_lossy(&body);
            keys.extend(xml_values(&xml, "Key"));
            let truncated =
                xml_values(&xml, "IsTruncated").first().map(String::as_str) == Some("true");
            token = xml_values(&xml, "NextContinuationToken").into_iter().next();
            if !truncated || token.is_none() {
                return Ok(keys);
            }
        }
    }

    /// `GetObject`.
    ///
    /// # Errors
    /// As [`S3Client::create_bucket`].
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, RunnerError> {
        let (status, body) = self.request("GET", Some(key), &[], &[]).await?;
        if status == 200 {
            Ok(body)
        } else {
            Err(s3_error(&format!("get {key}"), status, &body))
        }
    }

    /// `PutObject`.
    ///
    /// # Errors
    /// As [`S3Client::create_bucket`].
    pub async fn put(&self, key: &str, body: &[u8]) -> Result<(), RunnerError> {
        let (status, resp) = self.request("PUT", Some(key), &[], body).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(s3_error(&format!("put {key}"), status, &resp))
        }
    }

    /// `DeleteObject`.
    ///
    /// # Errors
    /// As [`S3Client::create_bucket`].
    pub async fn delete(&self, key: &str) -> Result<(), RunnerError> {
        let (status, resp) = self.request("DELETE", Some(key), &[], &[]).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(s3_error(&format!("delete {key}"), status, &resp))
        }
    }

    /// One HTTP/1.1 request (`Connection: close`); returns status and body.
    async fn request(
        &self,
        method: &str,
        key: Option<&str>,
        query: &[(String, String)],
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), RunnerError> {
        let loc = &self.location;
        let mut path = format!("/{}", uri_encode(&loc.bucket, false));
        if let Some(key) = key {
            path.push('/');
            path.push_str(&uri_encode(key, true));
        }
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
            .collect();
        pairs.sort();
        let canonical_query = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let payload_hash = hex(&Sha256::digest(body));
        let amz_date = amz_date(std::time::SystemTime::now());
        let mut headers = vec![
            ("host".to_string(), loc.host.clone()),
            ("x-amz-content-sha256".to_string(), payload_hash.clone()),
            ("x-amz-date".to_string(), amz_date.clone()),
        ];
        if let Some(creds) = &self.credentials {
            let signed_headers = "host;x-amz-content-sha256;x-amz-date";
            let canonical_headers: String =
                headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
            let canonical_request = format!(
                "{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
            );
            let date = &amz_date[..8];
            let scope = format!("{date}/{}/s3/aws4_request", loc.region);
            let string_to_sign = format!(
                "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
                hex(&Sha256::digest(canonical_request.as_bytes()))
            );
            let k_date = hmac(
                format!("AWS4{}", creds.secret_access_key).as_bytes(),
                date.as_bytes(),
            );
            let k_region = hmac(&k_date, loc.region.as_bytes());
            let k_service = hmac(&k_region, b"s3");
            let k_signing = hmac(&k_service, b"aws4_request");
            let signature = hex(&hmac(&k_signing, string_to_sign.as_bytes()));
            headers.push((
                "authorization".into(),
                format!(
                    "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                    creds.access_key_id
                ),
            ));
        }
        let target = if canonical_query.is_empty() {
            path
        } else {
            format!("{path}?{canonical_query}")
        };
        let mut request = format!("{method} {target} HTTP/1.1\r\n");
        for (k, v) in &headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        ));
        let io = |e| RunnerError::io(format!("s3 request to {}", loc.host), e);
        let mut stream = TcpStream::connect(&loc.host).await.map_err(io)?;
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        stream.write_all(body).await.map_err(io)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.map_err(io)?;
        parse_response(&response).ok_or_else(|| RunnerError::Remote {
            what: "s3",
            message: format!("malformed HTTP response from {}", loc.host),
        })
    }
}

/// Status and body of a complete HTTP/1.1 response (`Content-Length`, chunked, or until EOF).
fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = resp.parse(raw).ok()? else {
        return None;
    };
    let status = resp.code?;
    let chunked = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked")
    });
    let rest = &raw[head_len..];
    if !chunked {
        return Some((status, rest.to_vec()));
    }
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let line_end = rest[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
        let size_str = std::str::from_utf8(&rest[pos..line_end]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        pos = line_end + 2;
        if size == 0 {
            return Some((status, body));
        }
        body.extend_from_slice(rest.get(pos..pos + size)?);
        pos += size + 2;
    }
}

/// The text of every `<tag>…</tag>` in `xml`, entity-decoded.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(
            after[..end]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &after[end + close.len()..];
    }
    out
}

/// SigV4 URI encoding: everything but `A-Za-z0-9-_.~` (and `/` when `keep_slash`) as `%XX`.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut k = if key.len() > BLOCK {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(BLOCK, 0);
    let mut inner = Sha256::new();
    inner.update(k.iter().map(|b| b ^ 0x36).collect::<Vec<_>>());
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(k.iter().map(|b| b ^ 0x5c).collect::<Vec<_>>());
    outer.update(inner.finalize());
    outer.finalize().to_vec()
}

/// `YYYYMMDDTHHMMSSZ` (UTC) of `t`.
fn amz_date(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Checks a mount's kind and URI (credentials are resolved only when syncing).
pub(crate) fn validate_mount(mount: &RunnerMount, provider: &str) -> Result<(), RunnerError> {
    if mount.intent.kind != RunnerMountKind::S3 {
        return Err(RunnerError::unsupported(
            &format!("mount {:?} ({:?})", mount.name, mount.intent.kind),
            provider,
        ));
    }
    S3Location::parse(&mount.intent.uri).map(|_| ())
}

/// The client of a mount (credentials resolved from the environment).
fn mount_client(mount: &RunnerMount, provider: &str) -> Result<S3Client, RunnerError> {
    validate_mount(mount, provider)?;
    let location = S3Location::parse(&mount.intent.uri)?;
    let credentials = match &mount.intent.credentials {
        Some(r) => Some(S3Credentials::parse(&r.resolve()?)?),
        None => None,
    };
    Ok(S3Client::new(location, credentials))
}

/// A key's path relative to the prefix, if it is a plain relative path (no `..`, not a
/// directory marker).
fn relative_key(prefix: &str, key: &str) -> Option<PathBuf> {
    let rel = key.strip_prefix(prefix)?;
    if rel.is_empty() || rel.ends_with('/') {
        return None;
    }
    let path = PathBuf::from(rel);
    path.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(path)
}

/// Copies the mount's objects into `mount.path` of the session.
pub(crate) async fn sync_in(
    session: &dyn RunnerSession,
    mount: &RunnerMount,
    provider: &str,
) -> Result<(), RunnerError> {
    let client = mount_client(mount, provider)?;
    session.create_dir(&mount.path).await?;
    for key in client.list().await? {
        let Some(rel) = relative_key(&client.location.prefix, &key) else {
            tracing::warn!("mount {:?}: skipping object {key:?}", mount.name);
            continue;
        };
        let contents = client.get(&key).await?;
        session
            .write_file(RunnerFileWriteRequest {
                path: mount.path.join(rel),
                contents,
            })
            .await?;
    }
    Ok(())
}

/// Copies the files under `mount.path` back to the bucket and deletes objects whose file is
/// gone (writable mounts only; needs `find` on the runner).
pub(crate) async fn sync_out(
    session: &dyn RunnerSession,
    mount: &RunnerMount,
    provider: &str,
) -> Result<(), RunnerError> {
    if mount.read_only {
        return Ok(());
    }
    let client = mount_client(mount, provider)?;
    let root = session.paths().absolutize(&mount.path);
    let mut find = RunnerCommandRequest::new(
        format!("mount-find-{}", crate::fresh_id()),
        "find",
        [".", "-type", "f", "-print0"],
    );
    find.cwd = Some(root.clone());
    let out = session.spawn(find).await?.collect().await;
    if out.exit_code != Some(0) {
        return Err(RunnerError::Remote {
            what: "find",
            message: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let mut local = std::collections::BTreeSet::new();
    for entry in out.stdout.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let rel = String::from_utf8_lossy(entry);
        let rel = rel.strip_prefix("./").unwrap_or(&rel).to_string();
        let contents = session
            .read_file(RunnerFileReadRequest {
                path: root.join(Path::new(&rel)),
            })
            .await?
            .contents;
        let key = format!("{}{rel}", client.location.prefix);
        client.put(&key, &contents).await?;
        local.insert(key);
    }
    for key in client.list().await? {
        if relative_key(&client.location.prefix, &key).is_some() && !local.contains(&key) {
            client.delete(&key).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uris() {
        let loc = S3Location::parse(
            "s3://b/data/x?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=eu-west-1",
        )
        .expect("parse");
        assert_eq!(
            loc,
            S3Location {
                host: "127.0.0.1:9000".into(),
                bucket: "b".into(),
                prefix: "data/x/".into(),
                region: "eu-west-1".into()
            }
        );
        assert!(matches!(
            S3Location::parse("s3://b/p"),
            Err(RunnerError::Unsupported { .. })
        ));
        assert!(matches!(
            S3Location::parse("gs://b/p"),
            Err(RunnerError::InvalidDestination(_))
        ));
    }

    /// The worked example of the AWS SigV4 documentation ("Deriving the signing key").
    #[test]
    fn signing_key_matches_the_aws_example() {
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let k_date = hmac(format!("AWS4{secret}").as_bytes(), b"20120215");
        let k_region = hmac(&k_date, b"us-east-1");
        let k_service = hmac(&k_region, b"iam");
        let k_signing = hmac(&k_service, b"aws4_request");
        assert_eq!(
            hex(&k_signing),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn dates_and_keys() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(amz_date(t), "20231114T221320Z");
        assert_eq!(
            relative_key("p/", "p/a/b.txt"),
            Some(PathBuf::from("a/b.txt"))
        );
        assert_eq!(relative_key("p/", "p/../x"), None);
        assert_eq!(relative_key("p/", "p/dir/"), None);
        assert_eq!(uri_encode("a b/c", true), "a%20b/c");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((200, b"abcde".to_vec())));
    }
}
