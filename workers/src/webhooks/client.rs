//! The one HTTP exchange a webhook delivery is: resolve the endpoint's host,
//! refuse it if ANY address it resolves to is one a delivery may never reach
//! (`keyledger_events::domain::webhook::forbidden`: loopback, private,
//! link-local and metadata, …; unless the operator allows private
//! destinations), connect to one of exactly those checked addresses (so DNS
//! rebinding cannot swap in another between check and connect), TLS with
//! the Mozilla roots for `https`, one `POST`, and the answer's status line.
//!
//! Deliberately small, on tokio and rustls (both already built for the
//! mailer): no redirects are ever followed (a 3xx is a failed attempt), no
//! proxy is taken from the environment, no connection is reused, the
//! answer's head is read up to 16 KiB and its body not at all, and the whole
//! exchange is bounded by one timeout (10 s: the contract's "a 2xx answer within
//! 10 s is success").

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keyledger_events::domain::webhook::{forbidden, WebhookUrl};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest a delivery may take, from resolving to the status line.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer read: its head (status line and headers).
const MAX_HEAD: usize = 16 * 1024;

/// Sends deliveries. Cheap to clone.
#[derive(Clone)]
pub struct WebhookClient {
    allow_private: bool,
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

/// Why an attempt got no answer (in words for the delivery log; never a
/// secret: the request's headers and body are not part of it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The destination is one a delivery may not reach.
    #[error("refused: {0}")]
    Forbidden(String),
    #[error("{0}")]
    Failed(String),
}

impl WebhookClient {
    /// A client; with `allow_private`, destinations on loopback, private
    /// and link-local addresses are allowed (and plain `http` URLs).
    pub fn new(allow_private: bool) -> WebhookClient {
        let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        WebhookClient {
            allow_private,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout: TIMEOUT,
        }
    }

    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// POSTs `body` to `url` with `headers`; the answer's status code.
    pub async fn post(&self, url: &WebhookUrl, headers: &[(&str, String)], body: &[u8]) -> Result<u16, SendError> {
        tokio::time::timeout(self.timeout, self.exchange(url, headers, body))
            .await
            .unwrap_or_else(|_| {
                Err(SendError::Failed(format!(
                    "no answer within {} s",
                    self.timeout.as_secs()
                )))
            })
    }

    /// The addresses `url`'s host stands for, all of them allowed.
    pub async fn resolve(&self, url: &WebhookUrl) -> Result<Vec<SocketAddr>, SendError> {
        let port = url.port();
        let addresses: Vec<SocketAddr> = match url.host_ip() {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => tokio::net::lookup_host((url.host(), port))
                .await
                .map_err(|e| SendError::Failed(format!("{} does not resolve: {e}", url.host())))?
                .collect(),
        };
        if addresses.is_empty() {
            return Err(SendError::Failed(format!("{} resolves to no address", url.host())));
        }
        if !self.allow_private {
            for address in &addresses {
                if let Some(reason) = forbidden(address.ip()) {
                    return Err(SendError::Forbidden(format!(
                        "{} resolves to {}, a {reason} address (KEYLEDGER_WEBHOOK_ALLOW_PRIVATE is not set)",
                        url.host(),
                        address.ip()
                    )));
                }
            }
        }
        Ok(addresses)
    }

    async fn exchange(&self, url: &WebhookUrl, headers: &[(&str, String)], body: &[u8]) -> Result<u16, SendError> {
        if !url.is_https() && !self.allow_private {
            return Err(SendError::Forbidden(
                "plain http (KEYLEDGER_WEBHOOK_ALLOW_PRIVATE is not set)".into(),
            ));
        }
        let addresses = self.resolve(url).await?;
        let mut last_error = None;
        let mut connected = None;
        for address in addresses {
            match TcpStream::connect(address).await {
                Ok(stream) => {
                    connected = Some(stream);
                    break;
                }
                Err(e) => last_error = Some(format!("connecting to {address}: {e}")),
            }
        }
        let Some(stream) = connected else {
            return Err(SendError::Failed(last_error.unwrap_or_else(|| "no address".into())));
        };
        let request = request_bytes(url, headers, body);
        if !url.is_https() {
            return send(stream, &request).await;
        }
        let name = match url.host_ip() {
            Some(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
            None => rustls::pki_types::ServerName::try_from(url.host())
                .map_err(|_| SendError::Failed(format!("'{}' is not a TLS server name", url.host())))?,
        };
        let tls = self
            .tls
            .connect(name, stream)
            .await
            .map_err(|e| SendError::Failed(format!("TLS with {}: {e}", url.host())))?;
        send(tls, &request).await
    }
}

fn request_bytes(url: &WebhookUrl, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: keyledger-webhooks/{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        url.target(),
        url.authority(),
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Writes the request and reads the answer's status line (and headers, up
/// to [`MAX_HEAD`]); the body is never read.
async fn send<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &[u8]) -> Result<u16, SendError> {
    let failed = |what: &str, e: std::io::Error| SendError::Failed(format!("{what}: {e}"));
    stream.write_all(request).await.map_err(|e| failed("sending", e))?;
    stream.flush().await.map_err(|e| failed("sending", e))?;
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 2048];
    loop {
        let read = stream
            .read(&mut buffer)
            .await
            .map_err(|e| failed("reading the answer", e))?;
        if read == 0 {
            return Err(SendError::Failed("the connection closed without an answer".into()));
        }
        head.extend_from_slice(&buffer[..read]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                return response
                    .code
                    .ok_or_else(|| SendError::Failed("the answer has no status code".into()))
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(SendError::Failed(format!(
                    "the answer's head is longer than {} KiB",
                    MAX_HEAD / 1024
                )))
            }
            Err(e) => return Err(SendError::Failed(format!("the answer is not HTTP/1.1: {e}"))),
        }
    }
}
