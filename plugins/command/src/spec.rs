//! Parsing the configuration and the command's output. Pure, so it is tested natively.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// Split a command line into words: whitespace separates, `'...'` is literal,
/// `"..."` allows `\"` and `\\`, and a backslash outside quotes escapes one char.
pub fn shell_split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("trailing backslash".into()),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// Comma-separated items with surrounding whitespace trimmed, empty ones dropped.
pub fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Parse comma-separated `KEY=VALUE` pairs.
pub fn parse_env(value: &str) -> Result<Vec<(String, String)>, String> {
    list(value)
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().into(), v.trim().into())),
            _ => Err(format!("`{item}` is not KEY=VALUE")),
        })
        .collect()
}

/// One output artifact and the globs that fill it.
#[derive(Debug)]
pub struct OutputSpec {
    /// Artifact name.
    pub artifact: String,
    /// The globs as written (checked to compile; the host matches them).
    pub patterns: Vec<String>,
}

/// Parse comma-separated `artifact=glob` entries, grouping repeated artifacts in
/// first-seen order.
pub fn parse_outputs(value: &str) -> Result<Vec<OutputSpec>, String> {
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for item in list(value) {
        let (artifact, pattern) = item
            .split_once('=')
            .map(|(a, p)| (a.trim(), p.trim().trim_start_matches("./")))
            .filter(|(a, p)| !a.is_empty() && !p.is_empty())
            .ok_or_else(|| format!("`{item}` is not artifact=glob"))?;
        if pattern.starts_with('/') || pattern.split('/').any(|part| part == "..") {
            return Err(format!("glob `{pattern}` must stay inside the workspace"));
        }
        match grouped.iter_mut().find(|(a, _)| a == artifact) {
            Some((_, patterns)) => patterns.push(pattern.into()),
            None => grouped.push((artifact.into(), vec![pattern.into()])),
        }
    }
    grouped
        .into_iter()
        .map(|(artifact, patterns)| {
            compile(&patterns)?;
            Ok(OutputSpec { artifact, patterns })
        })
        .collect()
}

/// Compile globs where `*` stays within one path segment and `**` crosses them.
fn compile(patterns: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let glob: Glob = GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("bad glob `{p}`: {e}"))?;
        set.add(glob);
    }
    set.build().map_err(|e| e.to_string())
}

/// `name=value` pairs from `::set-variable name=value` lines of stdout.
pub fn set_variables(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("::set-variable "))
        .filter_map(|rest| rest.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell() {
        let w = shell_split(r#"cargo  test -p 'my crate' "a \"b\" c" x\ y """#).unwrap();
        assert_eq!(
            w,
            ["cargo", "test", "-p", "my crate", r#"a "b" c"#, "x y", ""]
        );
        assert_eq!(shell_split("a'b'\"c\"").unwrap(), ["abc"]);
        assert!(shell_split("echo 'oops").is_err());
        assert!(shell_split("echo \"oops").is_err());
        assert!(shell_split("   ").unwrap().is_empty());
    }

    #[test]
    fn parses_outputs_and_groups_artifacts() {
        let specs = parse_outputs("dist=build/*.js, reports=**/*.xml ,dist=./README.md").unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].artifact, "dist");
        assert_eq!(specs[0].patterns, ["build/*.js", "README.md"]);
        assert!(parse_outputs("nonsense").is_err());
        assert!(parse_outputs("a=/etc/*").is_err());
        assert!(parse_outputs("a=../x").is_err());
        assert!(parse_outputs("a=[").is_err());
    }

    #[test]
    fn star_stays_in_one_level_double_star_crosses() {
        let d = &compile(&["build/*.js".to_string()]).unwrap();
        assert!(d.is_match("build/app.js"));
        assert!(!d.is_match("build/sub/app.js"));
        let r = &compile(&["**/*.xml".to_string()]).unwrap();
        assert!(r.is_match("report.xml"));
        assert!(r.is_match("target/a/b/report.xml"));
    }

    #[test]
    fn env_and_variables() {
        assert_eq!(
            parse_env("A=1, B = x=y").unwrap(),
            [
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "x=y".to_string())
            ]
        );
        assert!(parse_env("A").is_err());
        let vars = set_variables("hi\n::set-variable version=1.2.3\r\n::set-variable bad\n");
        assert_eq!(vars, [("version".to_string(), "1.2.3".to_string())]);
        assert_eq!(tail("1\n2\n3\n", 2), "2\n3");
    }
}
