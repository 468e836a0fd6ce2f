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

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    /// A bucket in a directory, and two local stores (two machines).
    fn machines() -> (
        tempfile::TempDir,
        RemoteArtifacts,
        ArtifactStore,
        ArtifactStore,
    ) {
        let temp = tempfile::tempdir().unwrap();
        let url = format!("file://{}", temp.path().join("bucket").display());
        let remote = RemoteArtifacts::open(&url).unwrap();
        let first = ArtifactStore::open(&temp.path().join("first")).unwrap();
        let second = ArtifactStore::open(&temp.path().join("second")).unwrap();
        (temp, remote, first, second)
    }

    fn stored(store: &ArtifactStore, dir: &Path, files: &[(&str, &str)]) -> ArtifactInfo {
        for (name, content) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        store.ingest(dir).unwrap()
    }

    #[test]
    fn an_artifact_made_on_one_machine_arrives_identical_on_another() {
        let (temp, remote, first, second) = machines();
        let info = stored(&first, &temp.path().join("out"), &[("a/b.txt", "hello")]);
        block_on(remote.upload(&first, &info.digest)).unwrap();
        block_on(remote.download(&second, &info.digest)).unwrap();
        let copy = second.path_of(&info.digest);
        assert_eq!(
            std::fs::read_to_string(copy.join("a/b.txt")).unwrap(),
            "hello"
        );
        assert_eq!(crate::artifact::digest_tree(&copy).unwrap(), info);
    }

    #[test]
    fn an_object_changed_in_the_bucket_is_refused_and_nothing_is_stored() {
        let (temp, remote, first, second) = machines();
        let info = stored(&first, &temp.path().join("out"), &[("app.txt", "genuine")]);
        let other = stored(
            &first,
            &temp.path().join("evil"),
            &[("app.txt", "tampered")],
        );
        for digest in [&info.digest, &other.digest] {
            block_on(remote.upload(&first, digest)).unwrap();
        }
        // Someone with write access to the bucket swaps the object's bytes.
        let objects = temp.path().join("bucket/artifacts");
        std::fs::copy(
            objects.join(format!("{}.tar", other.digest)),
            objects.join(format!("{}.tar", info.digest)),
        )
        .unwrap();
        let error = block_on(remote.download(&second, &info.digest)).unwrap_err();
        assert!(
            format!("{error:#}").contains("does not match its digest"),
            "{error:#}"
        );
        assert!(!second.contains(&info.digest));
        assert!(!second.contains(&other.digest));
    }

    #[test]
    fn an_object_that_climbs_out_of_its_tree_is_refused() {
        let (temp, remote, _, second) = machines();
        let digest = "0".repeat(64);
        let objects = temp.path().join("bucket/artifacts");
        std::fs::create_dir_all(&objects).unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(4);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // Written raw: the tar crate refuses to build `..` paths itself.
        header.as_old_mut().name[..13].copy_from_slice(b"../escaped.sh");
        header.set_cksum();
        tar.append(&header, &b"boom"[..]).unwrap();
        std::fs::write(
            objects.join(format!("{digest}.tar")),
            tar.into_inner().unwrap(),
        )
        .unwrap();
        let error = block_on(remote.download(&second, &digest)).unwrap_err();
        assert!(format!("{error:#}").contains(".."), "{error:#}");
        assert!(!temp.path().join("escaped.sh").exists());
        assert!(!temp.path().join("second/escaped.sh").exists());
    }

    #[test]
    fn a_missing_object_names_the_bucket() {
        let (_temp, remote, _, second) = machines();
        let error = block_on(remote.download(&second, &"f".repeat(64))).unwrap_err();
        assert!(
            format!("{error:#}").contains("is not in file://"),
            "{error:#}"
        );
    }
}
