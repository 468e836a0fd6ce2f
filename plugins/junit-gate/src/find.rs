//! Finding the reports: a recursive walk of the input artifact, filtered by a glob.

use std::io;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};

/// Compiles the `path` config: `*` and `?` do not cross `/`, `**` does.
pub fn compile(pattern: &str) -> Result<GlobMatcher, String> {
    let pattern = pattern.trim().trim_start_matches("./");
    if pattern.is_empty() {
        return Err("path is empty".to_string());
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("path {pattern:?} is not a valid glob: {e}"))
}

/// Every regular file under `root` whose `/`-separated path relative to `root`
/// matches `glob`, sorted. Symbolic links are not followed.
pub fn find(root: &Path, glob: &GlobMatcher) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    walk(root, "", glob, &mut found)?;
    found.sort();
    Ok(found)
}

fn walk(dir: &Path, rel: &str, glob: &GlobMatcher, found: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), &rel, glob, found)?;
        } else if kind.is_file() && glob.is_match(&rel) {
            found.push(entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, path: &str) -> bool {
        compile(pattern).unwrap().is_match(path)
    }

    #[test]
    fn globs() {
        assert!(matches("**/*.xml", "TEST-a.xml"));
        assert!(matches("**/*.xml", "target/surefire-reports/TEST-a.xml"));
        assert!(!matches("**/*.xml", "a.json"));
        assert!(matches("reports/*.xml", "reports/a.xml"));
        assert!(!matches("reports/*.xml", "reports/sub/a.xml"));
        assert!(matches("./reports/*.xml", "reports/a.xml"));
        assert!(compile("").is_err());
        assert!(compile("[").is_err());
    }

    #[test]
    fn walks_sorted_and_filtered() {
        let root = std::env::temp_dir().join(format!("junit-gate-find-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("b/deep")).unwrap();
        std::fs::create_dir_all(root.join("a")).unwrap();
        for f in ["top.xml", "a/one.xml", "b/deep/two.xml", "b/notes.txt"] {
            std::fs::write(root.join(f), "<testsuite/>").unwrap();
        }
        let all = find(&root, &compile("**/*.xml").unwrap()).unwrap();
        let rel: Vec<_> = all
            .iter()
            .map(|p| {
                p.strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/")
            })
            .collect();
        assert_eq!(rel, ["a/one.xml", "b/deep/two.xml", "top.xml"]);
        let top = find(&root, &compile("*.xml").unwrap()).unwrap();
        assert_eq!(top, [root.join("top.xml")]);
        assert!(
            find(&root, &compile("none/**").unwrap())
                .unwrap()
                .is_empty()
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
