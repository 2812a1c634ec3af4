//! Reads the Prometheus text format (what `/metrics` serves) into families:
//! enough to compare it with the catalog, not a full parser (no
//! timestamps, no exemplars: Drover emits neither).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context};

/// One metric family: `# HELP`, `# TYPE` and its samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Family {
    pub kind: String,
    pub help: String,
    pub samples: Vec<Sample>,
}

impl Family {
    /// Label names over all samples, without the histogram's `le`.
    pub fn label_names(&self) -> BTreeSet<String> {
        self.samples
            .iter()
            .flat_map(|s| s.labels.keys())
            .filter(|l| *l != "le" && *l != "quantile")
            .cloned()
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's own name (`x_bucket` for a histogram `x`).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Families by name. A sample belongs to the family named by the latest
/// `# TYPE` line it extends (`x_bucket`, `x_sum`, `x_count` of histogram `x`).
pub fn parse(text: &str) -> anyhow::Result<BTreeMap<String, Family>> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.entry(name.to_string()).or_default().help = unescape_help(help);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').with_context(at)?;
            families.entry(name.to_string()).or_default().kind = kind.to_string();
            current = Some(name.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line).with_context(at)?;
        let family = match &current {
            Some(f) if sample.name == *f || belongs_to(&sample.name, f) => f.clone(),
            _ => bail!("{}: a sample without its # TYPE line", at()),
        };
        families.entry(family).or_default().samples.push(sample);
    }
    Ok(families)
}

fn belongs_to(sample: &str, family: &str) -> bool {
    sample
        .strip_prefix(family)
        .is_some_and(|suffix| matches!(suffix, "_bucket" | "_sum" | "_count"))
}

fn unescape_help(s: &str) -> String {
    s.replace("\\n", "\n").replace("\\\\", "\\")
}

fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let name_end = line.find(['{', ' ']).context("no value")?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        loop {
            // A label: name="value", then ',' or '}'.
            let mut key = String::new();
            let mut closed_at = None;
            for (i, c) in chars.by_ref() {
                match c {
                    '=' => break,
                    '}' if key.trim().is_empty() => {
                        closed_at = Some(i);
                        break;
                    }
                    ',' | ' ' => {}
                    _ => key.push(c),
                }
            }
            if let Some(i) = closed_at {
                rest = &body[i + 1..];
                break;
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bail!("label {key}: value not quoted");
            }
            let mut value = String::new();
            let mut escaped = false;
            let mut done = false;
            for (_, c) in chars.by_ref() {
                match (escaped, c) {
                    (true, 'n') => value.push('\n'),
                    (true, c) => value.push(c),
                    (false, '\\') => {
                        escaped = true;
                        continue;
                    }
                    (false, '"') => {
                        done = true;
                        break;
                    }
                    (false, c) => value.push(c),
                }
                escaped = false;
            }
            if !done {
                bail!("label {key}: unterminated value");
            }
            labels.insert(key, value);
        }
    }
    let value = rest
        .split_whitespace()
        .next()
        .context("no value")?
        .parse::<f64>()
        .context("value is not a number")?;
    Ok(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP drover_http_request_duration_seconds HTTP request duration by route, in seconds
# TYPE drover_http_request_duration_seconds histogram
drover_http_request_duration_seconds_bucket{route="GET /v1/jobs/{id}",le="0.5"} 3
drover_http_request_duration_seconds_bucket{route="GET /v1/jobs/{id}",le="+Inf"} 4
drover_http_request_duration_seconds_sum{route="GET /v1/jobs/{id}"} 0.25
drover_http_request_duration_seconds_count{route="GET /v1/jobs/{id}"} 4
# HELP drover_queue_depth Tasks waiting to be placed
# TYPE drover_queue_depth gauge
drover_queue_depth 7
# HELP drover_agent_alloc_memory_bytes Odd \\ help
# TYPE drover_agent_alloc_memory_bytes gauge
drover_agent_alloc_memory_bytes{alloc="a \"quoted\"/0/1"} NaN
"#;

    #[test]
    fn histogram_samples_join_their_family_and_le_is_not_a_label() {
        let f = parse(TEXT).unwrap();
        assert_eq!(f.len(), 3);
        let h = &f["drover_http_request_duration_seconds"];
        assert_eq!(h.kind, "histogram");
        assert_eq!(h.help, "HTTP request duration by route, in seconds");
        assert_eq!(h.samples.len(), 4);
        assert_eq!(h.samples[1].labels["le"], "+Inf");
        assert_eq!(h.samples[1].labels["route"], "GET /v1/jobs/{id}");
        assert_eq!(h.label_names(), BTreeSet::from(["route".to_string()]));
        assert_eq!(f["drover_queue_depth"].samples[0].value, 7.0);
        assert!(f["drover_queue_depth"].label_names().is_empty());
    }

    #[test]
    fn escaped_label_values_help_and_nan_are_read() {
        let f = parse(TEXT).unwrap();
        let m = &f["drover_agent_alloc_memory_bytes"];
        assert_eq!(m.help, "Odd \\ help");
        assert_eq!(m.samples[0].labels["alloc"], "a \"quoted\"/0/1");
        assert!(m.samples[0].value.is_nan());
    }

    #[test]
    fn a_sample_of_another_family_is_an_error() {
        let err = parse("# TYPE a gauge\nb 1\n").unwrap_err().to_string();
        assert!(err.contains("without its # TYPE"), "{err}");
    }
}
