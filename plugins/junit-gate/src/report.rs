//! Pure JUnit XML parsing and counting; no host calls, so it is tested natively.

use std::fmt::Write as _;

/// How one test case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Passed,
    Failed,
    Errored,
    Skipped,
}

/// Counts over any number of reports, plus the names of the failing tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub tests: u64,
    pub failures: u64,
    pub errors: u64,
    pub skipped: u64,
    pub passed: u64,
    /// `classname.name` of every failed or errored test, in report order.
    pub failing: Vec<String>,
}

impl Summary {
    fn record(&mut self, name: String, status: Status) {
        self.tests += 1;
        match status {
            Status::Passed => self.passed += 1,
            Status::Skipped => self.skipped += 1,
            Status::Failed => {
                self.failures += 1;
                self.failing.push(name);
            }
            Status::Errored => {
                self.errors += 1;
                self.failing.push(name);
            }
        }
    }

    /// Adds another summary's counts and failing tests to this one.
    pub fn merge(&mut self, other: Summary) {
        self.tests += other.tests;
        self.failures += other.failures;
        self.errors += other.errors;
        self.skipped += other.skipped;
        self.passed += other.passed;
        self.failing.extend(other.failing);
    }

    /// Failed plus errored tests.
    pub fn broken(&self) -> u64 {
        self.failures + self.errors
    }

    /// `failures`, `errors`... as output variables, in a fixed order.
    pub fn variables(&self) -> [(&'static str, u64); 5] {
        [
            ("tests", self.tests),
            ("failures", self.failures),
            ("errors", self.errors),
            ("skipped", self.skipped),
            ("passed", self.passed),
        ]
    }

    /// One line for people: `120 tests: 115 passed, 2 failed, 1 errored, 2 skipped`.
    pub fn line(&self) -> String {
        format!(
            "{} tests: {} passed, {} failed, {} errored, {} skipped",
            self.tests, self.passed, self.failures, self.errors, self.skipped
        )
    }

    /// The job-failed message when more tests broke than `allowed`, else `None`.
    pub fn gate(&self, allowed: u64) -> Option<String> {
        if self.broken() <= allowed {
            return None;
        }
        let mut msg = format!(
            "{} of {} tests failed ({}, {}; {} allowed): ",
            self.broken(),
            self.tests,
            plural(self.failures, "failure"),
            plural(self.errors, "error"),
            allowed
        );
        msg.push_str(&list_names(&self.failing, MAX_NAMES));
        Some(msg)
    }
}

/// `1 failure`, `2 failures`.
fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// How many failing tests a failure message names.
pub const MAX_NAMES: usize = 20;

/// `a, b, c` for at most `max` names, then `and N more`.
pub fn list_names(names: &[String], max: usize) -> String {
    let mut out = names
        .iter()
        .take(max)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > max {
        let _ = write!(out, " and {} more", names.len() - max);
    }
    out
}

/// Parses one report. `Ok(None)` when the document is well-formed XML but not a
/// JUnit report (its root is neither `<testsuites>` nor `<testsuite>`).
pub fn parse_report(xml: &str) -> Result<Option<Summary>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    if !matches!(root.tag_name().name(), "testsuites" | "testsuite") {
        return Ok(None);
    }
    let mut summary = Summary::default();
    for case in root
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "testcase")
    {
        let child = |tag: &str| {
            case.children()
                .any(|c| c.is_element() && c.tag_name().name() == tag)
        };
        let status = if child("failure") {
            Status::Failed
        } else if child("error") {
            Status::Errored
        } else if child("skipped") {
            Status::Skipped
        } else {
            Status::Passed
        };
        let name = case.attribute("name").unwrap_or("").trim();
        let classname = case.attribute("classname").unwrap_or("").trim();
        let full = match (classname.is_empty(), name.is_empty()) {
            (false, false) => format!("{classname}.{name}"),
            (false, true) => classname.to_string(),
            (true, false) => name.to_string(),
            (true, true) => "(unnamed test)".to_string(),
        };
        summary.record(full, status);
    }
    Ok(Some(summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUREFIRE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="com.example.CalcTest" tests="5" failures="1" errors="1" skipped="1" time="0.3">
  <properties><property name="java.version" value="21"/></properties>
  <testcase name="adds" classname="com.example.CalcTest" time="0.01"/>
  <testcase name="subtracts" classname="com.example.CalcTest" time="0.01">
    <failure message="expected 1 but was 2" type="AssertionError">stack &amp; trace</failure>
  </testcase>
  <testcase name="divides" classname="com.example.CalcTest">
    <error message="boom" type="ArithmeticException"/>
  </testcase>
  <testcase name="slow" classname="com.example.CalcTest"><skipped/></testcase>
  <testcase name="multiplies" classname="com.example.CalcTest">
    <system-out>some output</system-out>
  </testcase>
</testsuite>"#;

    const NESTED: &str = r#"<testsuites name="all">
  <testsuite name="a">
    <testcase classname="tests.test_a" name="test_one"/>
    <testcase classname="tests.test_a" name="test_two"><failure/></testcase>
  </testsuite>
  <testsuite name="b">
    <testsuite name="b.inner">
      <testcase name="bare"><skipped message="not today"/></testcase>
    </testsuite>
    <testcase classname="tests.test_b" name="test_both"><failure/><error/></testcase>
  </testsuite>
</testsuites>"#;

    #[test]
    fn surefire_report() {
        let s = parse_report(SUREFIRE).unwrap().unwrap();
        assert_eq!(
            (s.tests, s.passed, s.failures, s.errors, s.skipped),
            (5, 2, 1, 1, 1)
        );
        assert_eq!(
            s.failing,
            vec![
                "com.example.CalcTest.subtracts",
                "com.example.CalcTest.divides"
            ]
        );
        assert_eq!(
            s.line(),
            "5 tests: 2 passed, 1 failed, 1 errored, 1 skipped"
        );
    }

    #[test]
    fn nested_suites() {
        let s = parse_report(NESTED).unwrap().unwrap();
        assert_eq!(
            (s.tests, s.passed, s.failures, s.errors, s.skipped),
            (4, 1, 2, 0, 1)
        );
        assert_eq!(
            s.failing,
            vec!["tests.test_a.test_two", "tests.test_b.test_both"]
        );
    }

    #[test]
    fn empty_and_foreign_documents() {
        let s = parse_report("<testsuites/>").unwrap().unwrap();
        assert_eq!(s, Summary::default());
        assert_eq!(
            parse_report("<project><modelVersion/></project>").unwrap(),
            None
        );
    }

    #[test]
    fn namespaced_root_is_accepted() {
        let xml = r#"<j:testsuite xmlns:j="urn:x"><j:testcase name="t"><j:failure/></j:testcase></j:testsuite>"#;
        let s = parse_report(xml).unwrap().unwrap();
        assert_eq!((s.tests, s.failures), (1, 1));
    }

    #[test]
    fn malformed_xml_is_an_error() {
        assert!(parse_report("<testsuite><testcase></testsuite>").is_err());
        assert!(parse_report("").is_err());
        // DTDs (and so entity expansion bombs) are refused.
        let dtd = r#"<!DOCTYPE t [<!ENTITY a "aaaa">]><testsuite>&a;</testsuite>"#;
        assert!(parse_report(dtd).is_err());
    }

    #[test]
    fn merging_and_gating() {
        let mut total = Summary::default();
        total.merge(parse_report(SUREFIRE).unwrap().unwrap());
        total.merge(parse_report(NESTED).unwrap().unwrap());
        assert_eq!(
            (
                total.tests,
                total.passed,
                total.failures,
                total.errors,
                total.skipped
            ),
            (9, 3, 3, 1, 2)
        );
        assert_eq!(total.broken(), 4);
        assert_eq!(total.gate(4), None);
        assert_eq!(total.gate(10), None);
        let msg = total.gate(3).unwrap();
        assert_eq!(
            msg,
            "4 of 9 tests failed (3 failures, 1 error; 3 allowed): \
             com.example.CalcTest.subtracts, com.example.CalcTest.divides, \
             tests.test_a.test_two, tests.test_b.test_both"
        );
        assert_eq!(
            total.variables(),
            [
                ("tests", 9),
                ("failures", 3),
                ("errors", 1),
                ("skipped", 2),
                ("passed", 3)
            ]
        );
    }

    #[test]
    fn long_lists_are_cut_at_twenty() {
        let mut xml = String::from("<testsuite>");
        for i in 0..25 {
            xml.push_str(&format!(
                r#"<testcase classname="c" name="t{i}"><failure/></testcase>"#
            ));
        }
        xml.push_str("</testsuite>");
        let s = parse_report(&xml).unwrap().unwrap();
        let msg = s.gate(0).unwrap();
        assert!(msg.contains("c.t0, c.t1,"), "{msg}");
        assert!(msg.contains("c.t19 and 5 more"), "{msg}");
        assert!(!msg.contains("c.t20"), "{msg}");
    }

    #[test]
    fn list_names_edges() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(list_names(&names, 3), "a, b, c");
        assert_eq!(list_names(&names, 2), "a, b and 1 more");
        assert_eq!(list_names(&[], 20), "");
    }

    #[test]
    fn unnamed_tests() {
        let xml = r#"<testsuite><testcase classname="only.class"><error/></testcase><testcase><failure/></testcase></testsuite>"#;
        let s = parse_report(xml).unwrap().unwrap();
        assert_eq!(s.failing, vec!["only.class", "(unnamed test)"]);
    }
}
