//! Just enough PromQL handling for the checks: the metric names a query
//! uses, and Grafana's variable substitution.

use std::collections::{BTreeMap, BTreeSet};

/// The query with every string literal emptied (`"a[b]"` becomes `""`),
/// so that what remains is PromQL syntax only.
pub fn without_strings(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if matches!(c, '"' | '\'' | '`') {
            // Skip to the closing quote, escapes included.
            while let Some(s) = chars.next() {
                if s == '\\' && c != '`' {
                    chars.next();
                } else if s == c {
                    out.push(c);
                    break;
                }
            }
        }
    }
    out
}

/// Every `drover_*` identifier outside string literals: the metric names
/// (with any histogram suffix) a query reads.
pub fn drover_metrics(expr: &str) -> BTreeSet<String> {
    without_strings(expr)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("drover_"))
        .map(str::to_string)
        .collect()
}

/// The range selectors (`[5m]`, `[$__rate_interval]`, `[15m:1m]`) a query
/// uses, without their brackets.
pub fn ranges(expr: &str) -> Vec<String> {
    without_strings(expr)
        .split('[')
        .skip(1)
        .filter_map(|r| r.split(']').next())
        .map(str::to_string)
        .collect()
}

/// The catalog name a query's metric name refers to: a histogram's
/// `_bucket`, `_sum` and `_count` series are its family's.
pub fn family_of<'a>(name: &'a str, histograms: &BTreeSet<&str>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if histograms.contains(base) {
                return base;
            }
        }
    }
    name
}

/// Replaces Grafana variables (`$name`, `${name}`) by their values; names
/// not given are left as they are.
pub fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = expr.to_string();
    // Longest first: `$__rate_interval` before a hypothetical `$__rate`.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        out = out
            .replace(&format!("${{{name}}}"), &vars[name])
            .replace(&format!("${name}"), &vars[name]);
    }
    out
}

/// The Grafana variables (`$x`, `${x}`) a query still contains.
pub fn variables(expr: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        let braced = rest.starts_with('{');
        let body = if braced { &rest[1..] } else { rest };
        let name: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    found
}

/// Percent-encodes a query-string value (RFC 3986 unreserved kept).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_found_outside_string_literals_only() {
        let expr = r#"histogram_quantile(0.99, sum by (le) (rate(drover_scheduling_latency_seconds_bucket{route!="drover_not_a_metric \" x"}[$__rate_interval]))) / on (instance) drover_is_leader"#;
        assert_eq!(
            drover_metrics(expr),
            BTreeSet::from([
                "drover_scheduling_latency_seconds_bucket".to_string(),
                "drover_is_leader".to_string()
            ])
        );
    }

    #[test]
    fn ranges_are_found_outside_string_literals_only() {
        let expr = r#"rate(x{code=~"[45].."}[$__rate_interval]) + max_over_time(y[15m:1m])"#;
        assert_eq!(
            without_strings(expr),
            r#"rate(x{code=~""}[$__rate_interval]) + max_over_time(y[15m:1m])"#
        );
        assert_eq!(ranges(expr), vec!["$__rate_interval", "15m:1m"]);
    }

    #[test]
    fn histogram_series_map_to_their_family_only_for_histograms() {
        let h = BTreeSet::from(["drover_x_seconds"]);
        assert_eq!(family_of("drover_x_seconds_bucket", &h), "drover_x_seconds");
        assert_eq!(family_of("drover_x_seconds_count", &h), "drover_x_seconds");
        assert_eq!(family_of("drover_y_count", &h), "drover_y_count");
    }

    #[test]
    fn variables_are_substituted_in_both_spellings() {
        let vars = BTreeMap::from([
            ("__rate_interval".to_string(), "1m".to_string()),
            ("instance".to_string(), ".*".to_string()),
        ]);
        let expr = r#"rate(x{instance=~"$instance", b=~"${instance}"}[$__rate_interval])"#;
        assert_eq!(
            variables(expr),
            BTreeSet::from(["instance".to_string(), "__rate_interval".to_string()])
        );
        let out = substitute(expr, &vars);
        assert_eq!(out, r#"rate(x{instance=~".*", b=~".*"}[1m])"#);
        assert!(variables(&out).is_empty());
    }

    #[test]
    fn url_encoding_keeps_only_unreserved_characters() {
        assert_eq!(
            url_encode("a b{c=\"d\"}[1m]"),
            "a%20b%7Bc%3D%22d%22%7D%5B1m%5D"
        );
    }
}
