//! Parquet roots in object storage (S3 and S3-compatible stores, GCS, Azure): where a file is
//! published when `parquet.dir` is a URL.
//!
//! A file is still encoded into a local temporary (in the staging directory) exactly as for a
//! local root, so the encoder, the row-group flushes and the crash points are the same. Publishing
//! it is one create-only PUT (`If-None-Match: *` on S3) of the closed file under its final,
//! deterministic name: the object appears whole or not at all, and a second writer of the same
//! name gets "already exists" instead of overwriting it. No multipart upload is ever started, so
//! a crash leaves nothing half-uploaded in the bucket, only a local temporary that the next
//! start removes.
//!
//! Execution model: the sink is synchronous; each call here runs its requests on the process's
//! object-store runtime (one thread, started on first use, never dropped) and waits for them,
//! which works from a plain thread and from inside the pipeline's tokio runtime alike: it
//! never enters or drops a runtime where that would panic.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::SinkError;

/// The largest file published by a single PUT: S3 takes up to 5 GiB in one request, and the
/// upload holds the whole file in memory for its duration, so files in a store are capped well
/// below that. The default `max_file_bytes` (64 MiB) is far under it.
pub const MAX_OBJECT_BYTES: u64 = 1 << 30;

/// Where Parquet files go: a local directory, or a prefix in an object store.
#[derive(Debug, Clone)]
pub enum Location {
    /// A directory on this machine (published by rename).
    Local(PathBuf),
    /// A bucket and prefix (published by create-only PUT).
    Store(Arc<ObjectRoot>),
}

impl Location {
    /// Reads `dir`: a path, `file://…`, `s3://bucket/prefix` (also `s3a://`), `gs://bucket/prefix`
    /// or `az://container/prefix` (also `abfs://`, `abfss://`). `options` are the store's
    /// settings (`parquet.storage`), under object_store's names (`endpoint`, `region`,
    /// `allow_http`, `virtual_hosted_style_request`, …); credentials come from the environment as
    /// each cloud's own tools find them, and for S3 also from the shared credentials file.
    ///
    /// # Errors
    /// An unknown scheme, a URL without a bucket, an unknown or invalid storage option, storage
    /// options for a local directory: each says what to fix. Never a silent fallback to a
    /// local directory.
    pub fn parse(dir: &Path, options: &BTreeMap<String, String>) -> Result<Self, SinkError> {
        let text = dir.to_string_lossy();
        let Some((scheme, _)) = text.split_once("://") else {
            return local(dir.to_owned(), options);
        };
        let bad = |reason: String| SinkError::Config {
            setting: "parquet.dir",
            value: text.to_string(),
            reason,
        };
        let url = url::Url::parse(&text).map_err(|e| bad(format!("not a valid URL: {e}")))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "file" {
            let path = url
                .to_file_path()
                .map_err(|()| bad("a file:// URL needs an absolute path".into()))?;
            return local(path, options);
        }
        let bucket = url.host_str().unwrap_or_default();
        if bucket.is_empty() {
            return Err(bad(format!(
                "names no bucket: write {scheme}://<bucket>/<prefix>"
            )));
        }
        let store: Arc<dyn ObjectStore> = match scheme.as_str() {
            "s3" | "s3a" => Arc::new(s3(&text, options)?.build().map_err(store_config)?),
            "gs" => {
                let mut builder = GoogleCloudStorageBuilder::from_env().with_url(text.as_ref());
                for (key, value) in options {
                    builder = builder.with_config(option::<GoogleConfigKey>(key)?, value);
                }
                Arc::new(builder.build().map_err(store_config)?)
            }
            "az" | "abfs" | "abfss" | "azure" => {
                let mut builder = MicrosoftAzureBuilder::from_env().with_url(text.as_ref());
                for (key, value) in options {
                    builder = builder.with_config(option::<AzureConfigKey>(key)?, value);
                }
                Arc::new(builder.build().map_err(store_config)?)
            }
            other => {
                return Err(bad(format!(
                    "unknown scheme {other}://: use a local path, file://, s3:// (or s3a://), gs:// or az://"
                )))
            }
        };
        let prefix = url.path().trim_matches('/');
        let prefix = ObjectPath::parse(prefix)
            .map_err(|e| bad(format!("the prefix is not a valid object path: {e}")))?;
        runtime().map_err(|source| SinkError::io("start the object-store runtime", dir)(source))?;
        let display = format!("{scheme}://{bucket}/{prefix}");
        Ok(Location::Store(Arc::new(ObjectRoot {
            store,
            prefix,
            display: display.trim_end_matches('/').to_owned(),
        })))
    }

    /// The local directory, when it is one.
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            Location::Local(dir) => Some(dir),
            Location::Store(_) => None,
        }
    }
}

fn local(dir: PathBuf, options: &BTreeMap<String, String>) -> Result<Location, SinkError> {
    if let Some(key) = options.keys().next() {
        return Err(SinkError::Config {
            setting: "parquet.storage",
            value: key.clone(),
            reason: format!(
                "storage options apply to object stores, and parquet.dir {} is a local directory (write s3://, gs:// or az:// to use one)",
                dir.display()
            ),
        });
    }
    Ok(Location::Local(dir))
}

/// S3 from the URL, the environment (keys, region, endpoint, web identity, container and
/// instance credentials: object_store reads them itself), the options, and — where neither the
/// environment nor the options give a key and no web identity is set up — the shared
/// credentials file, which AWS's tools read before web identity and instance metadata.
fn s3(url: &str, options: &BTreeMap<String, String>) -> Result<AmazonS3Builder, SinkError> {
    let mut builder = AmazonS3Builder::from_env().with_url(url);
    let mut has_key = std::env::var_os("AWS_ACCESS_KEY_ID").is_some();
    for (key, value) in options {
        let key = option::<AmazonS3ConfigKey>(key)?;
        has_key |= matches!(key, AmazonS3ConfigKey::AccessKeyId);
        builder = builder.with_config(key, value);
    }
    let web_identity = std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE").is_some();
    if !has_key && !web_identity {
        let profile =
            jobstream_aws::AwsCredentials::from_shared_file().map_err(|e| SinkError::Config {
                setting: "parquet.dir",
                value: url.to_owned(),
                reason: e.to_string(),
            })?;
        if let Some(credentials) = profile {
            builder = builder
                .with_access_key_id(credentials.access_key_id())
                .with_secret_access_key(credentials.secret_access_key());
            if let Some(token) = credentials.session_token() {
                builder = builder.with_token(token);
            }
        }
    }
    Ok(builder)
}

fn option<K: FromStr>(key: &str) -> Result<K, SinkError> {
    key.parse().map_err(|_| SinkError::Config {
        setting: "parquet.storage",
        value: key.to_owned(),
        reason: "not an option of this store (object_store's names: endpoint, region, allow_http, virtual_hosted_style_request, access_key_id, …)".into(),
    })
}

fn store_config(error: object_store::Error) -> SinkError {
    SinkError::Config {
        setting: "parquet.dir",
        value: String::new(),
        reason: error.to_string(),
    }
}

/// The runtime every object-store request runs on. One thread is plenty: requests are few
/// (a list at start, one PUT per file) and wait on the network, not the CPU.
fn runtime() -> Result<&'static tokio::runtime::Runtime, std::io::Error> {
    // Built inside the initialiser, so that only one is ever built (a second one dropped on a
    // tokio worker thread would panic).
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("object-store")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| std::io::Error::other(e.clone()))
}

/// A bucket and prefix.
pub struct ObjectRoot {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// `scheme://bucket/prefix`, never with credentials (a URL's user part is not kept).
    display: String,
}

impl std::fmt::Debug for ObjectRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The store's own Debug may show its configuration: only the URL here.
        f.debug_struct("ObjectRoot")
            .field("url", &self.display)
            .finish()
    }
}

/// What a create-only publish found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// The object was created.
    Created,
    /// An object of that name was there already (an earlier run published it before it could
    /// commit its input position, or another writer did); it was left as it was.
    AlreadyExists,
}

impl ObjectRoot {
    /// `scheme://bucket/prefix`.
    pub fn url(&self) -> &str {
        &self.display
    }

    /// The URL of `relative` (`table/date=…/name`), as reported for published files.
    pub fn url_of(&self, relative: &str) -> String {
        format!("{}/{relative}", self.display)
    }

    fn path(&self, relative: &str) -> ObjectPath {
        ObjectPath::from_iter(
            self.prefix
                .parts()
                .chain(relative.split('/').map(object_store::path::PathPart::from)),
        )
    }

    /// Runs a request on this root's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        request: impl Future<Output = Result<T, object_store::Error>> + Send + 'static,
    ) -> Result<T, object_store::Error> {
        let (done, outcome) = std::sync::mpsc::sync_channel(1);
        let runtime = runtime().map_err(|e| object_store::Error::Generic {
            store: "runtime",
            source: Box::new(e),
        })?;
        runtime.spawn(async move {
            let _ = done.send(request.await);
        });
        outcome.recv().unwrap_or_else(|_| {
            Err(object_store::Error::Generic {
                store: "runtime",
                source: "the object-store runtime stopped".into(),
            })
        })
    }

    /// Every object under `relative_dir` (`table/`), as `(path relative to the root, size)`.
    ///
    /// # Errors
    /// The listing failed.
    pub fn list(&self, relative_dir: &str) -> Result<Vec<(String, u64)>, SinkError> {
        let store = self.store.clone();
        let dir = self.path(relative_dir);
        let skip = self.prefix.parts().count();
        let objects = self
            .run(async move { store.list(Some(&dir)).try_collect::<Vec<_>>().await })
            .map_err(|source| self.error("list", relative_dir, source))?;
        Ok(objects
            .into_iter()
            .map(|meta| {
                let relative: Vec<String> = meta
                    .location
                    .parts()
                    .skip(skip)
                    .map(|p| p.as_ref().to_owned())
                    .collect();
                (relative.join("/"), meta.size)
            })
            .collect())
    }

    /// Publishes the closed local file `local` as `relative`, create-only.
    ///
    /// # Errors
    /// The file cannot be read, or the store refused the upload (other than "already exists").
    pub fn put_create(&self, local: &Path, relative: &str) -> Result<Put, SinkError> {
        let bytes = std::fs::read(local).map_err(SinkError::io("read for upload", local))?;
        let store = self.store.clone();
        let path = self.path(relative);
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let payload = PutPayload::from(Bytes::from(bytes));
        match self.run(async move { store.put_opts(&path, payload, options).await }) {
            Ok(_) => Ok(Put::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Put::AlreadyExists),
            Err(source) => Err(self.error("publish (create-only PUT)", relative, source)),
        }
    }

    /// The size of object `relative` (a HEAD).
    ///
    /// # Errors
    /// The object cannot be found or read.
    pub fn size(&self, relative: &str) -> Result<u64, SinkError> {
        let store = self.store.clone();
        let path = self.path(relative);
        self.run(async move { store.head(&path).await })
            .map(|meta| meta.size)
            .map_err(|source| self.error("read", relative, source))
    }

    /// Bytes `range` of object `relative` (a ranged GET).
    ///
    /// # Errors
    /// The object or range cannot be read.
    pub fn get_range(&self, relative: &str, range: Range<u64>) -> Result<Bytes, SinkError> {
        let store = self.store.clone();
        let path = self.path(relative);
        self.run(async move { store.get_range(&path, range).await })
            .map_err(|source| self.error("read", relative, source))
    }

    /// The Parquet footer of object `relative` of `size` bytes, read with two ranged GETs
    /// (the length at the end, then the footer itself).
    ///
    /// # Errors
    /// The object cannot be read or is not Parquet.
    pub fn footer(&self, relative: &str, size: u64) -> Result<ParquetMetaData, SinkError> {
        let not_parquet = |reason: String| SinkError::Parquet {
            path: PathBuf::from(self.url_of(relative)),
            source: parquet::errors::ParquetError::General(reason),
        };
        if size < 12 {
            return Err(not_parquet(format!(
                "{size} bytes is too short for Parquet"
            )));
        }
        let tail = self.get_range(relative, size - 8..size)?;
        if tail.get(4..8) != Some(b"PAR1") {
            return Err(not_parquet("no Parquet magic at the end".into()));
        }
        let length = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
        if length + 12 > size {
            return Err(not_parquet(format!("footer of {length} bytes in {size}")));
        }
        let footer = self.get_range(relative, size - 8 - length..size - 8)?;
        ParquetMetaDataReader::decode_metadata(&footer).map_err(|source| SinkError::Parquet {
            path: PathBuf::from(self.url_of(relative)),
            source,
        })
    }

    fn error(
        &self,
        action: &'static str,
        relative: &str,
        source: object_store::Error,
    ) -> SinkError {
        SinkError::Store {
            action,
            url: self.url_of(relative),
            source,
        }
    }
}

/// Ranged reads fetch whole blocks of this many bytes: a page header or a small column chunk
/// then costs one request, not one per read call.
const BLOCK_BYTES: u64 = 1 << 20;

/// Blocks of one object kept at most (64 MiB): a file's projected column chunks of a row group
/// fit, and memory stays bounded however large the object.
const CACHED_BLOCKS: usize = 64;

/// An object read by ranged GETs, for the Parquet reader: only the footer and the column chunks
/// a projection asks for are fetched (in [`BLOCK_BYTES`] blocks), never the whole object.
#[derive(Clone)]
pub struct RemoteFile(Arc<RemoteInner>);

struct RemoteInner {
    root: Arc<ObjectRoot>,
    relative: String,
    size: u64,
    blocks: std::sync::Mutex<(
        std::collections::HashMap<u64, Bytes>,
        std::collections::VecDeque<u64>,
    )>,
    fetched: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RemoteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteFile")
            .field("url", &self.url())
            .field("size", &self.0.size)
            .finish()
    }
}

impl RemoteFile {
    /// Object `relative` (under `root`) of `size` bytes.
    pub fn new(root: Arc<ObjectRoot>, relative: String, size: u64) -> Self {
        RemoteFile(Arc::new(RemoteInner {
            root,
            relative,
            size,
            blocks: std::sync::Mutex::new(Default::default()),
            fetched: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// `scheme://bucket/key`.
    pub fn url(&self) -> String {
        self.0.root.url_of(&self.0.relative)
    }

    /// Bytes fetched from the store so far.
    pub fn bytes_fetched(&self) -> u64 {
        self.0.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn block(&self, index: u64) -> Result<Bytes, SinkError> {
        let inner = &self.0;
        let mut cache = inner
            .blocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(block) = cache.0.get(&index) {
            return Ok(block.clone());
        }
        let start = index * BLOCK_BYTES;
        let end = (start + BLOCK_BYTES).min(inner.size);
        let block = inner.root.get_range(&inner.relative, start..end)?;
        inner
            .fetched
            .fetch_add(block.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if cache.1.len() >= CACHED_BLOCKS {
            if let Some(oldest) = cache.1.pop_front() {
                cache.0.remove(&oldest);
            }
        }
        cache.0.insert(index, block.clone());
        cache.1.push_back(index);
        Ok(block)
    }

    /// Bytes `start..start + length`, from the blocks that cover them.
    fn read_range(&self, start: u64, length: u64) -> Result<Bytes, SinkError> {
        let end = (start + length).min(self.0.size);
        if start >= end {
            return Ok(Bytes::new());
        }
        let (first, last) = (start / BLOCK_BYTES, (end - 1) / BLOCK_BYTES);
        if first == last {
            let block = self.block(first)?;
            let offset = (start - first * BLOCK_BYTES) as usize;
            return Ok(block.slice(offset..offset + (end - start) as usize));
        }
        let mut out = Vec::with_capacity((end - start) as usize);
        for index in first..=last {
            let block = self.block(index)?;
            let block_start = index * BLOCK_BYTES;
            let from = start.saturating_sub(block_start) as usize;
            let to = ((end - block_start) as usize).min(block.len());
            out.extend_from_slice(&block[from..to]);
        }
        Ok(Bytes::from(out))
    }
}

fn external(error: SinkError) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(error))
}

impl parquet::file::reader::Length for RemoteFile {
    fn len(&self) -> u64 {
        self.0.size
    }
}

impl parquet::file::reader::ChunkReader for RemoteFile {
    type T = RemoteRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<RemoteRead> {
        Ok(RemoteRead {
            file: self.clone(),
            position: start,
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.read_range(start, length as u64).map_err(external)
    }
}

/// A reader from a position of a [`RemoteFile`] on, block by block.
#[derive(Debug)]
pub struct RemoteRead {
    file: RemoteFile,
    position: u64,
}

impl std::io::Read for RemoteRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.position >= self.file.0.size || buf.is_empty() {
            return Ok(0);
        }
        let index = self.position / BLOCK_BYTES;
        let block = self.file.block(index).map_err(std::io::Error::other)?;
        let offset = (self.position - index * BLOCK_BYTES) as usize;
        let n = buf.len().min(block.len().saturating_sub(offset));
        buf[..n].copy_from_slice(&block[offset..offset + n]);
        self.position += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(dir: &str, options: &[(&str, &str)]) -> String {
        let options = options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match Location::parse(Path::new(dir), &options) {
            Err(error) => error.to_string(),
            Ok(location) => panic!("{dir} was taken as {location:?}"),
        }
    }

    #[test]
    fn a_url_is_never_taken_for_a_local_directory() {
        assert!(refusal("ftp://bucket/x", &[]).contains("unknown scheme ftp://"));
        assert!(refusal("s3:///prefix", &[]).contains("names no bucket"));
        assert!(refusal("s3://bucket/x", &[("no_such_option", "1")]).contains("no_such_option"));
        assert!(refusal("/var/lib/out", &[("endpoint", "http://x")]).contains("local directory"));
        let local = Location::parse(Path::new("file:///var/lib/out"), &BTreeMap::new());
        assert_eq!(
            local.ok().as_ref().and_then(Location::local_dir),
            Some(Path::new("/var/lib/out"))
        );
        let relative = Location::parse(Path::new("out/dir"), &BTreeMap::new());
        assert_eq!(
            relative.ok().as_ref().and_then(Location::local_dir),
            Some(Path::new("out/dir"))
        );
    }

    #[test]
    fn a_store_is_shown_by_its_url_and_objects_are_named_under_its_prefix() {
        let options = [("endpoint", "http://127.0.0.1:9"), ("allow_http", "true")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let Ok(Location::Store(root)) = Location::parse(Path::new("s3://lake/jobs/raw/"), &options)
        else {
            panic!("an s3:// URL is a store");
        };
        assert_eq!(root.url(), "s3://lake/jobs/raw");
        assert_eq!(
            root.path("job_events/date=2026-12-07/x.parquet").as_ref(),
            "jobs/raw/job_events/date=2026-12-07/x.parquet"
        );
        assert_eq!(
            format!("{root:?}"),
            "ObjectRoot { url: \"s3://lake/jobs/raw\" }"
        );
    }
}
