//! TLS between a real client and a warp filter served by [`drover_tls::serve`],
//! with certificates made here: the right CA passes; a wrong CA, an expired
//! certificate, plaintext against TLS and TLS against plaintext are refused
//! with an error that says which; mutual TLS wants the client's certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use drover_tls::{acceptor, connector, explain, ClientFiles, ServerFiles};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use warp::Filter;

/// A CA, and certificates it signs, written as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateParams,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "drover test CA");
        let ca_key = KeyPair::generate().unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
            ca_key,
        };
        let cert = pki.ca.self_signed(&pki.ca_key).unwrap();
        std::fs::write(pki.path("ca.pem"), cert.pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A certificate for 127.0.0.1, valid now unless `expired`: (cert, key).
    fn issue(&self, name: &str, expired: bool) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.ca, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (c, k) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn hello(
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    use warp::Reply;
    warp::any().map(|| "hello over TLS\n".into_response())
}

async fn tls_server(files: &ServerFiles) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let acceptor = acceptor(files).unwrap();
    tokio::spawn(drover_tls::serve(hello(), listener, acceptor, async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
    }
}

async fn plain_server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        warp::serve(hello())
            .incoming(listener)
            .graceful(async move {
                let _ = stopped.await;
            })
            .run(),
    );
    Server {
        addr,
        stop: Some(stop),
    }
}

/// `GET /` over TLS: the body, or the TLS error explained.
async fn get(addr: SocketAddr, files: &ClientFiles) -> Result<String, String> {
    let connector = connector(files).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector.connect(&addr.to_string(), tcp).await?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| explain(&e))?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.map_err(|e| explain(&e))?;
    Ok(String::from_utf8_lossy(&out).to_string())
}

fn trusting(ca: &Path) -> ClientFiles {
    ClientFiles {
        ca_file: Some(ca.to_path_buf()),
        identity: None,
    }
}

#[tokio::test]
async fn the_right_ca_passes_and_a_wrong_ca_or_an_expired_certificate_is_refused_saying_so() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("server", false);
    let files = ServerFiles {
        cert_file: cert,
        key_file: key,
        client_ca_file: None,
    };
    let srv = tls_server(&files).await;
    let body = get(srv.addr, &trusting(&pki.path("ca.pem"))).await.unwrap();
    assert!(
        body.starts_with("HTTP/1.1 200") && body.ends_with("hello over TLS\n"),
        "{body}"
    );

    let other = Pki::new();
    let err = get(srv.addr, &trusting(&other.path("ca.pem")))
        .await
        .unwrap_err();
    assert!(err.contains("not signed by the CA"), "{err}");

    let (old_cert, old_key) = pki.issue("old", true);
    let expired = tls_server(&ServerFiles {
        cert_file: old_cert,
        key_file: old_key,
        client_ca_file: None,
    })
    .await;
    let err = get(expired.addr, &trusting(&pki.path("ca.pem")))
        .await
        .unwrap_err();
    assert!(err.contains("expired"), "{err}");
}

#[tokio::test]
async fn plaintext_against_tls_and_tls_against_plaintext_are_refused() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("server", false);
    let srv = tls_server(&ServerFiles {
        cert_file: cert,
        key_file: key,
        client_ca_file: None,
    })
    .await;
    // A plain HTTP request to the TLS port gets no HTTP answer.
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    assert!(!String::from_utf8_lossy(&out).contains("hello"), "{out:?}");

    let plain = plain_server().await;
    let err = get(plain.addr, &trusting(&pki.path("ca.pem")))
        .await
        .unwrap_err();
    assert!(err.contains("did not answer in TLS"), "{err}");
}

#[tokio::test]
async fn with_a_client_ca_the_server_wants_a_certificate_from_that_ca() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("server", false);
    let srv = tls_server(&ServerFiles {
        cert_file: cert,
        key_file: key,
        client_ca_file: Some(pki.path("ca.pem")),
    })
    .await;
    let ca = pki.path("ca.pem");
    assert!(
        get(srv.addr, &trusting(&ca)).await.is_err(),
        "no client certificate"
    );
    let (agent_cert, agent_key) = pki.issue("agent", false);
    let with_identity = ClientFiles {
        ca_file: Some(ca.clone()),
        identity: Some((agent_cert, agent_key)),
    };
    let body = get(srv.addr, &with_identity).await.unwrap();
    assert!(body.ends_with("hello over TLS\n"), "{body}");
    let stranger = Pki::new();
    let (s_cert, s_key) = stranger.issue("stranger", false);
    let foreign = ClientFiles {
        ca_file: Some(ca),
        identity: Some((s_cert, s_key)),
    };
    assert!(
        get(srv.addr, &foreign).await.is_err(),
        "a certificate from another CA"
    );
}

#[test]
fn bad_files_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let err = acceptor(&ServerFiles {
        cert_file: junk.clone(),
        key_file: junk.clone(),
        client_ca_file: None,
    })
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("junk.pem") && err.contains("no PEM certificate"),
        "{err}"
    );
    let err = connector(&ClientFiles::default())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("CA file"), "{err}");
}
