//! Artifacts and plugins in a shared object store, for processes on several
//! machines (`--artifacts s3://bucket/prefix`).
//!
//! The local [`ArtifactStore`] stays where actions read and write: an output
//! is ingested locally first, then uploaded once as a tar of its tree under
//! `<prefix>/artifacts/<digest>.tar`; an input missing locally is downloaded,
//! unpacked with the same checks as `sluice artifacts get` (no `..`, no links
//! out, no special files), ingested, and refused unless its content has the
//! digest it was asked for. So the local store is a cache keyed by digest, and
//! an object changed in the bucket can never be handed to an action.
//!
//! Plugins are kept under `<prefix>/plugins/<sha256>/`, their `plugin.toml`
//! beside the component, so a worker installs (and precompiles) the exact
//! component a pipeline was validated against.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt as _;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use tokio::io::AsyncWriteExt as _;

use crate::artifact::{ArtifactInfo, ArtifactStore};

/// A bucket (or directory) shared by every process of one installation.
#[derive(Clone)]
pub struct RemoteArtifacts {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

impl std::fmt::Debug for RemoteArtifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteArtifacts")
            .field("url", &self.url)
            .finish()
    }
}

impl RemoteArtifacts {
    /// The store at `url`: `s3://bucket[/prefix]` (credentials, region and
    /// endpoint from the usual `AWS_*` variables, e.g. `AWS_ENDPOINT_URL` and
    /// `AWS_ALLOW_HTTP=true` for MinIO), or `file:///shared/dir`.
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url)
            .with_context(|| format!("--artifacts `{url}` is not a URL (s3://bucket/prefix)"))?;
        let prefix = ObjectPath::from(parsed.path().trim_matches('/'));
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "s3" => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .build()
                    .with_context(|| format!("opening the bucket of {url}"))?,
            ),
            "file" => {
                let root = Path::new(parsed.path());
                std::fs::create_dir_all(root)
                    .with_context(|| format!("creating {}", root.display()))?;
                return Ok(Self {
                    store: Arc::new(object_store::local::LocalFileSystem::new_with_prefix(root)?),
                    prefix: ObjectPath::default(),
                    url: url.to_string(),
                });
            }
            other => anyhow::bail!(
                "--artifacts `{url}`: unsupported scheme `{other}` (use s3:// or file://)"
            ),
        };
        Ok(Self {
            store,
            prefix,
            url: url.to_string(),
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn object(&self, parts: &[&str]) -> ObjectPath {
        parts
            .iter()
            .fold(self.prefix.clone(), |path, part| path.child(*part))
    }

    fn artifact_object(&self, digest: &str) -> ObjectPath {
        self.object(&["artifacts", &format!("{digest}.tar")])
    }

    async fn exists(&self, path: &ObjectPath) -> anyhow::Result<bool> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("looking up {path} in {}", self.url)),
        }
    }

    /// Upload the locally stored artifact `digest`, unless the bucket has it.
    /// The tar is written to a scratch file first, so memory stays flat
    /// whatever the artifact's size; large ones go up in parts.
    pub async fn upload(&self, local: &ArtifactStore, digest: &str) -> anyhow::Result<()> {
        let object = self.artifact_object(digest);
        if self.exists(&object).await? {
            return Ok(());
        }
        let (tree, scratch) = (local.path_of(digest), local.scratch_path("upload"));
        let tar = scratch.clone();
        blocking(move || {
            let file = std::fs::File::create(&tar)?;
            crate::export::pack(&tree, std::io::BufWriter::new(file))
        })
        .await
        .with_context(|| format!("packing artifact {digest}"))?;
        let result = self.put_file(&scratch, &object).await;
        std::fs::remove_file(&scratch).ok();
        result.with_context(|| format!("uploading artifact {digest} to {}", self.url))
    }

    /// Make artifact `digest` present in `local`, downloading it if missing.
    /// Its content is checked against `digest`; a mismatch is an error and
    /// leaves nothing under that digest.
    pub async fn download(&self, local: &ArtifactStore, digest: &str) -> anyhow::Result<()> {
        if local.contains(digest) {
            return Ok(());
        }
        let scratch = local.scratch_path("download");
        let result = self.fetch_verified(local, digest, &scratch).await;
        std::fs::remove_file(&scratch).ok();
        result.with_context(|| format!("downloading artifact {digest} from {}", self.url))
    }

    async fn fetch_verified(
        &self,
        local: &ArtifactStore,
        digest: &str,
        scratch: &Path,
    ) -> anyhow::Result<()> {
        self.get_file(&self.artifact_object(digest), scratch)
            .await?;
        let (local, tar, expected) = (local.clone(), scratch.to_path_buf(), digest.to_string());
        blocking(move || unpack_verified(&local, &tar, &expected)).await?;
        Ok(())
    }

    /// Upload a plugin's verified source (`plugin.toml` and its component)
    /// under its component's sha256.
    pub async fn upload_plugin(
        &self,
        source: &Path,
        sha256: &str,
        component: &str,
    ) -> anyhow::Result<()> {
        for file in ["plugin.toml", component] {
            let object = self.object(&["plugins", sha256, file]);
            self.put_file(&source.join(file), &object)
                .await
                .with_context(|| format!("uploading plugin file {file} to {}", self.url))?;
        }
        Ok(())
    }

    /// Download the plugin whose component has `sha256` into the new
    /// directory `dest` (the caller verifies it, as any install does).
    pub async fn download_plugin(
        &self,
        sha256: &str,
        component: &str,
        dest: &Path,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
        for file in ["plugin.toml", component] {
            anyhow::ensure!(
                !file.contains('/') && !file.starts_with('.'),
                "plugin component `{file}` is not a plain file name"
            );
            let object = self.object(&["plugins", sha256, file]);
            self.get_file(&object, &dest.join(file))
                .await
                .with_context(|| format!("downloading plugin {sha256} from {}", self.url))?;
        }
        Ok(())
    }

    async fn put_file(&self, file: &Path, object: &ObjectPath) -> anyhow::Result<()> {
        let mut reader = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {}", file.display()))?;
        let mut writer = object_store::buffered::BufWriter::new(self.store.clone(), object.clone());
        tokio::io::copy(&mut reader, &mut writer).await?;
        writer.shutdown().await?;
        Ok(())
    }

    async fn get_file(&self, object: &ObjectPath, file: &Path) -> anyhow::Result<()> {
        let found = self.store.get(object).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                anyhow::anyhow!("{object} is not in {}", self.url)
            }
            other => anyhow::Error::new(other),
        })?;
        let mut out = tokio::fs::File::create(file)
            .await
            .with_context(|| format!("creating {}", file.display()))?;
        let mut chunks = found.into_stream();
        while let Some(chunk) = chunks.next().await {
            out.write_all(&chunk?).await?;
        }
        out.flush().await?;
        Ok(())
    }
}

/// Unpack the tar at `tar` beside the store, ingest it, and check its digest.
fn unpack_verified(
    local: &ArtifactStore,
    tar: &Path,
    expected: &str,
) -> anyhow::Result<ArtifactInfo> {
    let staging: PathBuf = local.scratch_path("incoming");
    std::fs::create_dir(&staging)?;
    let file = std::fs::File::open(tar)?;
    if let Err(e) = crate::export::unpack_into(std::io::BufReader::new(file), &staging) {
        crate::artifact::remove_tree(&staging).ok();
        return Err(e);
    }
    let verified = crate::artifact::digest_tree(&staging).and_then(|info| {
        anyhow::ensure!(
            info.digest == expected,
            "the downloaded artifact does not match its digest: expected {expected}, content has {}",
            info.digest
        );
        Ok(info)
    });
    if let Err(e) = verified {
        crate::artifact::remove_tree(&staging).ok();
        return Err(e);
    }
    let info = local.ingest(&staging)?;
    Ok(info)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| anyhow::anyhow!("a blocking transfer task failed: {e}"))?
}
