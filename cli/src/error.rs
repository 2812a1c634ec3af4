//! Turning a failed command into a message on stderr and an exit status.
//!
//! The exit status contract (also in `drover --help`):
//! 0 success; 1 the command failed (the master refused it, a local file
//! could not be read, or the awaited job failed); 2 usage (clap's own
//! status for a bad command line); 3 no master could be reached.

use drover_api::client::ClientError;

/// Success.
pub const OK: u8 = 0;
/// The command failed at the master, locally, or the awaited job failed.
pub const FAILED: u8 = 1;
/// The command line is wrong (clap exits with 2 as well).
pub const USAGE: u8 = 2;
/// No master answered.
pub const UNREACHABLE: u8 = 3;
/// Interrupted by Ctrl-C (128 + SIGINT, as a shell reports it).
pub const INTERRUPTED: u8 = 130;

/// What to print for a failed command, and the status to exit with.
/// `addrs` are the masters tried; `had_token` tells whether a token was
/// sent, to aim the hint of a 401 answer.
pub fn report(err: &anyhow::Error, addrs: &[String], had_token: bool) -> (String, u8) {
    match err.downcast_ref::<ClientError>() {
        Some(e) => client_error(e, addrs, had_token),
        None => (format!("error: {err:#}"), FAILED),
    }
}

fn client_error(err: &ClientError, addrs: &[String], had_token: bool) -> (String, u8) {
    match err {
        ClientError::Unreachable { addr, reason } => {
            (unreachable(addr, reason, addrs), UNREACHABLE)
        }
        ClientError::Api {
            status,
            message,
            fields,
            retry_after,
            ..
        } => {
            let mut text = format!("error: {message}");
            for f in fields {
                text.push_str(&format!("\n  {}: {}", f.path, f.message));
            }
            if let Some(hint) = api_hint(*status, *retry_after, had_token) {
                text.push_str("\nhint: ");
                text.push_str(&hint);
            }
            (text, FAILED)
        }
        ClientError::NoAddress => (
            "error: no master address given: use --addr HOST:PORT or set DROVER_ADDR".to_string(),
            USAGE,
        ),
        ClientError::Decode { .. } => (format!("error: {err}"), FAILED),
    }
}

fn unreachable(addr: &str, reason: &str, addrs: &[String]) -> String {
    let reason = plain_reason(reason);
    let what = if addrs.len() > 1 {
        format!(
            "cannot reach any master ({}); the last one tried, {addr}: {reason}",
            addrs.join(", ")
        )
    } else {
        format!("cannot reach the master at {addr} ({reason})")
    };
    format!(
        "error: {what}. Is it running? Start one with `drover dev`, or set --addr / DROVER_ADDR."
    )
}

/// "Connection refused (os error 111)" -> "connection refused".
fn plain_reason(reason: &str) -> String {
    let trimmed = match reason.find(" (os error") {
        Some(i) => &reason[..i],
        None => reason,
    };
    let mut chars = trimmed.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "no reason given".to_string(),
    }
}

fn api_hint(status: u16, retry_after: Option<u64>, had_token: bool) -> Option<String> {
    match status {
        401 if had_token => Some(
            "the master did not accept the token: check DROVER_TOKEN or --token-file".to_string(),
        ),
        401 => Some(
            "this master requires a token: set DROVER_TOKEN, or pass --token-file FILE".to_string(),
        ),
        403 => {
            Some("use a token with the role named above (DROVER_TOKEN or --token-file)".to_string())
        }
        503 => Some(match retry_after {
            Some(s) => format!("the master is not ready; it asks to retry in {s}s"),
            None => "the master is not ready; try again shortly".to_string(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_api::views::FieldProblem;

    fn addrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_unreachable_master_gets_the_start_hint_and_status_3() {
        let err = anyhow::Error::new(ClientError::Unreachable {
            addr: "127.0.0.1:7070".into(),
            reason: "Connection refused (os error 111)".into(),
        });
        let (text, code) = report(&err, &addrs(&["127.0.0.1:7070"]), false);
        assert_eq!(code, UNREACHABLE);
        assert_eq!(
            text,
            "error: cannot reach the master at 127.0.0.1:7070 (connection refused). \
             Is it running? Start one with `drover dev`, or set --addr / DROVER_ADDR."
        );
        let (text, _) = report(&err, &addrs(&["a:1", "127.0.0.1:7070"]), false);
        assert!(
            text.contains("cannot reach any master (a:1, 127.0.0.1:7070)"),
            "{text}"
        );
    }

    #[test]
    fn an_invalid_spec_lists_each_field_on_its_own_line() {
        let err = anyhow::Error::new(ClientError::Api {
            addr: "m:1".into(),
            status: 400,
            code: "invalid_spec".into(),
            message: "the job spec is invalid".into(),
            fields: vec![
                FieldProblem {
                    path: "count".into(),
                    message: "must be at least 1".into(),
                },
                FieldProblem {
                    path: "resources.memory".into(),
                    message: "\"12Zb\" is not a size".into(),
                },
            ],
            retry_after: None,
        });
        let (text, code) = report(&err, &[], false);
        assert_eq!(code, FAILED);
        assert_eq!(
            text,
            "error: the job spec is invalid\n  count: must be at least 1\n  \
             resources.memory: \"12Zb\" is not a size"
        );
    }

    #[test]
    fn a_401_hints_at_the_token_and_other_errors_exit_1() {
        let err = anyhow::Error::new(ClientError::Api {
            addr: "m:1".into(),
            status: 401,
            code: "unauthenticated".into(),
            message: "missing token".into(),
            fields: vec![],
            retry_after: None,
        });
        let (text, code) = report(&err, &[], false);
        assert_eq!(code, FAILED);
        assert!(text.contains("set DROVER_TOKEN"), "{text}");
        let (text, _) = report(&err, &[], true);
        assert!(text.contains("did not accept the token"), "{text}");
        let (text, code) = report(&anyhow::anyhow!("cannot read x.yaml"), &[], false);
        assert_eq!((text.as_str(), code), ("error: cannot read x.yaml", FAILED));
    }
}
