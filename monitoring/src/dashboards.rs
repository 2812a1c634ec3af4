//! The Grafana dashboards (`dashboards/*.json`): their panels, queries and
//! template variables.

use anyhow::Context;
use serde_json::Value;

/// One dashboard file.
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// File name, e.g. `nodes.json`.
    pub file: String,
    pub json: Value,
}

/// One query of one panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelQuery {
    pub dashboard: String,
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

impl std::fmt::Display for PanelQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} / {:?} / {}: {}",
            self.dashboard, self.panel, self.ref_id, self.expr
        )
    }
}

/// Every `*.json` in `dashboards/`, by file name.
pub fn load_all() -> anyhow::Result<Vec<Dashboard>> {
    let dir = crate::dashboards_dir();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let json = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            out.push(Dashboard {
                file: path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                json,
            });
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

impl Dashboard {
    /// Every panel, those inside rows included (rows themselves are not).
    pub fn panels(&self) -> Vec<&Value> {
        fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
            for p in panels.as_array().into_iter().flatten() {
                if p["type"] == "row" {
                    walk(&p["panels"], out);
                } else {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.json["panels"], &mut out);
        out
    }

    /// Every panel target's PromQL.
    pub fn queries(&self) -> Vec<PanelQuery> {
        let mut out = Vec::new();
        for p in self.panels() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(PanelQuery {
                    dashboard: self.file.clone(),
                    panel: p["title"].as_str().unwrap_or("").to_string(),
                    ref_id: t["refId"].as_str().unwrap_or("").to_string(),
                    expr: t["expr"].as_str().unwrap_or("").to_string(),
                });
            }
        }
        out
    }

    /// The template variables (`templating.list`).
    pub fn variables(&self) -> Vec<&Value> {
        self.json["templating"]["list"]
            .as_array()
            .map(|v| v.iter().collect())
            .unwrap_or_default()
    }
}

/// The metric and label of a `label_values(metric, label)` variable query.
pub fn label_values_query(var: &Value) -> Option<(String, String)> {
    let q = var["query"]["query"]
        .as_str()
        .or_else(|| var["query"].as_str())
        .or_else(|| var["definition"].as_str())?;
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (metric, label) = inner.rsplit_once(',')?;
    Some((metric.trim().to_string(), label.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn panels_inside_rows_are_found_and_rows_are_not_panels() {
        let d = Dashboard {
            file: "x.json".into(),
            json: json!({"panels": [
                {"type": "stat", "title": "a", "targets": [{"refId": "A", "expr": "up"}]},
                {"type": "row", "title": "r", "panels": [
                    {"type": "timeseries", "title": "b", "targets": [
                        {"refId": "A", "expr": "x"}, {"refId": "B", "expr": "y"}]}
                ]}
            ]}),
        };
        assert_eq!(d.panels().len(), 2);
        let q = d.queries();
        assert_eq!(q.len(), 3);
        assert_eq!(q[2].panel, "b");
        assert_eq!(q[2].ref_id, "B");
        assert_eq!(q[2].to_string(), "x.json / \"b\" / B: y");
    }

    #[test]
    fn label_values_queries_are_read_from_either_query_form() {
        let v = json!({"query": {"query": "label_values(drover_x, instance)"}});
        assert_eq!(
            label_values_query(&v),
            Some(("drover_x".to_string(), "instance".to_string()))
        );
        let v = json!({"query": "label_values(up{job=\"a,b\"}, instance)"});
        assert_eq!(
            label_values_query(&v),
            Some(("up{job=\"a,b\"}".to_string(), "instance".to_string()))
        );
        assert_eq!(label_values_query(&json!({"query": "prometheus"})), None);
    }
}
