//! The metrics catalog: the tables of `dashboards/METRICS.md`.

use std::collections::BTreeSet;

use anyhow::{bail, Context};

/// One row of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// `counter`, `gauge` or `histogram`, as the text format's `# TYPE`.
    pub kind: String,
    /// Label names (the backticked identifiers of the Labels column).
    pub labels: BTreeSet<String>,
    pub unit: String,
    pub help: String,
}

impl Entry {
    /// Agents' metrics are `drover_agent_*`; the rest are the master's.
    pub fn is_agent(&self) -> bool {
        self.name.starts_with("drover_agent_")
    }
}

/// `METRICS.md` as shipped.
pub fn load() -> anyhow::Result<Vec<Entry>> {
    let path = crate::dashboards_dir().join("METRICS.md");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Every table row whose first cell is a backticked `drover_` name; other
/// lines (prose, headers, separators) are skipped.
pub fn parse(markdown: &str) -> anyhow::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for (n, line) in markdown.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with("| `drover_") {
            continue;
        }
        let cells = split_row(line);
        let [name, kind, labels, unit, help] = cells.as_slice() else {
            bail!(
                "line {}: {} cells, want 5 (metric, type, labels, unit, help): {line}",
                n + 1,
                cells.len()
            );
        };
        entries.push(Entry {
            name: name.trim_matches('`').to_string(),
            kind: kind.clone(),
            labels: backticked(labels)
                .into_iter()
                .filter(|l| is_identifier(l))
                .collect(),
            unit: unit.clone(),
            help: help.clone(),
        });
    }
    Ok(entries)
}

/// The cells of a `| a | b |` row, trimmed; a `|` inside backticks is text.
fn split_row(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut cells = vec![String::new()];
    let mut in_code = false;
    for c in inner.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                cells.last_mut().expect("never empty").push(c);
            }
            '|' if !in_code => cells.push(String::new()),
            _ => cells.last_mut().expect("never empty").push(c),
        }
    }
    cells.into_iter().map(|c| c.trim().to_string()).collect()
}

fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_read_with_label_names_but_not_label_value_examples() {
        let md = "\
# Title

| Metric | Type | Labels | Unit | Help |
|---|---|---|---|---|
| `drover_http_requests_total` | counter | `route`: e.g. `GET /v1/jobs/{id}`; `code` | requests | HTTP requests |
| `drover_queue_depth` | gauge | | tasks | Tasks waiting, a | b |
";
        let err = parse(md).unwrap_err().to_string();
        assert!(err.contains("line 6: 6 cells"), "{err}");

        let md = md.replace("a | b", "a or b");
        let rows = parse(&md).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "drover_http_requests_total");
        assert_eq!(rows[0].kind, "counter");
        assert_eq!(
            rows[0].labels,
            BTreeSet::from(["route".to_string(), "code".to_string()])
        );
        assert_eq!(rows[1].labels, BTreeSet::new());
        assert_eq!(rows[1].help, "Tasks waiting, a or b");
        assert!(!rows[1].is_agent());
    }

    #[test]
    fn a_pipe_inside_backticks_does_not_split_a_cell() {
        assert_eq!(
            split_row("| `a|b` | c |"),
            vec!["`a|b`".to_string(), "c".to_string()]
        );
    }
}
