//! `promtool` and a throwaway Prometheus server.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use drover_api::client::Client;
use serde_json::Value;

use crate::promql::url_encode;

/// A Prometheus binary (`prometheus`, `promtool`) on the PATH, or an error
/// that says how to get it.
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "`{name}` is not installed: run scripts/setup.sh --tests (it installs the Debian package \
         `prometheus`, which brings `prometheus` and `promtool`)"
    )
}

/// Runs `promtool` with `args` in `dir`, feeding it `stdin`.
pub fn promtool(args: &[&str], dir: &Path, stdin: Option<&[u8]>) -> anyhow::Result<Output> {
    let mut child = Command::new(tool("promtool")?)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool")?;
    let mut input = child.stdin.take().context("promtool's stdin")?;
    // Closed after writing, so promtool sees the end of its input.
    input
        .write_all(stdin.unwrap_or_default())
        .context("writing to promtool")?;
    drop(input);
    child.wait_with_output().context("running promtool")
}

/// What a command printed, both streams, for failure messages.
pub fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A Prometheus server on a free loopback port, its storage and config in a
/// temp dir. Killed (by its pid) when dropped.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    pub addr: String,
    dir: tempfile::TempDir,
    client: Client,
}

/// One series of a query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Prometheus {
    /// Starts Prometheus with `config` (YAML) and waits until it is ready.
    /// The port is found by binding port 0 and letting it go, so another
    /// process may take it first: then it tries again on another.
    pub async fn start(config: &str) -> anyhow::Result<Prometheus> {
        let binary = tool("prometheus")?;
        let mut last_error = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("drover-prometheus-")
                .tempdir()
                .context("temp dir")?;
            std::fs::write(dir.path().join("prometheus.yml"), config)
                .context("writing prometheus.yml")?;
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("finding a free port")?
                .port();
            let addr = format!("127.0.0.1:{port}");
            let log = std::fs::File::create(dir.path().join("prometheus.log"))
                .context("creating the log file")?;
            let child = Command::new(&binary)
                .arg(format!(
                    "--config.file={}",
                    dir.path().join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            let client =
                Client::new(vec![addr.clone()], None).with_timeout(Duration::from_secs(10));
            let mut prom = Prometheus {
                child,
                addr,
                dir,
                client,
            };
            match prom.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => return Ok(prom),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().context("checking on prometheus")? {
                bail!("prometheus exited ({status}):\n{}", self.log());
            }
            if let Ok(r) = self.client.raw("GET", "/-/ready", None).await {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "prometheus not ready on {} within {within:?}:\n{}",
                    self.addr,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What Prometheus logged (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` of the HTTP API, its `data` once `status` is `success`.
    pub async fn api(&self, path: &str) -> anyhow::Result<Value> {
        let r = self
            .client
            .raw("GET", path, None)
            .await
            .with_context(|| format!("GET {path}"))?;
        let body: Value = serde_json::from_slice(&r.body)
            .with_context(|| format!("GET {path}: answer is not JSON"))?;
        if body["status"] != "success" {
            bail!(
                "GET {path}: {} {}: {}",
                r.status,
                body["errorType"].as_str().unwrap_or(""),
                body["error"].as_str().unwrap_or("")
            );
        }
        Ok(body["data"].clone())
    }

    /// An instant query, now.
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<Series>> {
        self.instant(&format!("/api/v1/query?query={}", url_encode(expr)), expr)
            .await
    }

    /// An instant query at `unix_seconds`: scrapes after that moment do not
    /// change its answer.
    pub async fn query_at(&self, expr: &str, unix_seconds: f64) -> anyhow::Result<Vec<Series>> {
        let path = format!(
            "/api/v1/query?query={}&time={unix_seconds:.3}",
            url_encode(expr)
        );
        self.instant(&path, expr).await
    }

    async fn instant(&self, path: &str, expr: &str) -> anyhow::Result<Vec<Series>> {
        let data = self.api(path).await?;
        let value = |v: &Value| -> anyhow::Result<f64> {
            v[1].as_str()
                .context("sample value is not a string")?
                .parse::<f64>()
                .context("sample value is not a number")
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    Ok(Series {
                        labels: serde_json::from_value(r["metric"].clone())
                            .context("series labels")?,
                        value: value(&r["value"])?,
                    })
                })
                .collect(),
            Some("scalar") => Ok(vec![Series {
                labels: BTreeMap::new(),
                value: value(&data["result"])?,
            }]),
            other => bail!("{expr}: unexpected result type {other:?}"),
        }
    }

    /// The values of `label` on series matching `selector` (what Grafana's
    /// `label_values(selector, label)` offers).
    pub async fn label_values(&self, selector: &str, label: &str) -> anyhow::Result<Vec<String>> {
        let data = self
            .api(&format!(
                "/api/v1/label/{label}/values?match%5B%5D={}",
                url_encode(selector)
            ))
            .await?;
        serde_json::from_value(data).context("label values")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Child::kill signals the child by its pid; nothing else is touched.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
