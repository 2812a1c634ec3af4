//! The typed client keeps its connections alive between calls, and replaces
//! one that the server closed meanwhile without failing the call. Against a
//! small HTTP/1.1 server on loopback that counts the connections it accepts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use drover_api::client::{Client, ClientError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `{"leader": ...}`-less JSON (`{}`) to every request; with
/// `close_after_answer`, closes each connection after its first answer
/// without saying so (as a master that restarted or timed an idle
/// connection out would).
async fn server(close_after_answer: bool) -> (String, Arc<AtomicUsize>) {
    server_answering(close_after_answer, Vec::new()).await
}

const OK_ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

/// Like [`server`], but the first requests (across connections) get
/// `first` in turn; `{}` after them.
async fn server_answering(
    close_after_answer: bool,
    first: Vec<&'static [u8]>,
) -> (String, Arc<AtomicUsize>) {
    let first = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
        first,
    )));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let first = Arc::clone(&first);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // Requests here have no body: a head ends the request.
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                    buf.drain(..end);
                    let next = first.lock().unwrap().pop_front();
                    let answer = next.unwrap_or(OK_ANSWER);
                    if sock.write_all(answer).await.is_err() {
                        return;
                    }
                    if close_after_answer {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn calls_share_one_kept_alive_connection() {
    let (addr, accepted) = server(false).await;
    let client = Client::new(vec![addr], None);
    for _ in 0..10 {
        let v: serde_json::Value = client.get("/v1/anything").await.expect("an answer");
        assert_eq!(v, serde_json::json!({}));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_server_closed_is_replaced_and_the_call_succeeds() {
    let (addr, accepted) = server(true).await;
    let client = Client::new(vec![addr], None);
    for _ in 0..5 {
        let v: serde_json::Value = client.get("/v1/anything").await.expect("an answer");
        assert_eq!(v, serde_json::json!({}));
        // Give the client's connection task time to see the close; a call
        // that races it must succeed all the same (the loop's later rounds).
        tokio::task::yield_now().await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
}

const TOO_MANY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: 52\r\n\r\n{\"error\":{\"code\":\"overloaded\",\"message\":\"busy now\"}}";

#[tokio::test]
async fn a_429_is_waited_out_for_its_retry_after_and_the_call_then_succeeds() {
    let (addr, _) = server_answering(false, vec![TOO_MANY, TOO_MANY]).await;
    let client = Client::new(vec![addr], None);
    let started = std::time::Instant::now();
    let v: serde_json::Value = client.get("/v1/anything").await.expect("an answer");
    assert_eq!(v, serde_json::json!({}));
    let waited = started.elapsed();
    // Retry-After: 1, then twice that (a second refusal in a row doubles
    // the wait), each stretched by up to a half against herds.
    assert!(
        waited >= std::time::Duration::from_secs(3) && waited < std::time::Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_client_without_patience_gets_the_429_with_its_retry_after() {
    let (addr, _) = server_answering(false, vec![TOO_MANY]).await;
    let client = Client::new(vec![addr], None).with_patience(std::time::Duration::ZERO);
    match client.get::<serde_json::Value>("/v1/anything").await {
        Err(ClientError::Api {
            status: 429,
            code,
            retry_after,
            ..
        }) => {
            assert_eq!(code, "overloaded");
            assert_eq!(retry_after, Some(1));
        }
        other => panic!("{other:?}"),
    }
}
