//! What a pipeline's `[caches]` table may say: names and the default size.
//! The caches themselves live in `sluice_engine::cache`.

/// The max-size of a cache that does not set one: 10 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;

/// Whether `name` may name a cache: it becomes a directory name and the key of
/// `#{cache.<name>}`, so letters, digits, `-` and `_` only.
pub fn is_cache_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
