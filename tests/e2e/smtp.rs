//! A real SMTP server for the tests (mailin-embedded, in this process),
//! keeping every message it accepts, parsed the way a mail program would.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailin_embedded::response::{self, Response};
use mailin_embedded::{Handler, Server};

/// One message as received: the envelope and the parsed content.
#[derive(Debug, Clone)]
pub struct Mail {
    pub envelope_to: Vec<String>,
    pub subject: String,
    /// The `To` header as written.
    pub to: String,
    pub message_id: String,
    pub alert_kind: String,
    pub text: String,
    pub html: String,
    /// The message exactly as it came over the wire.
    pub raw: String,
}

impl Mail {
    pub fn parse(raw: &[u8], envelope_to: Vec<String>) -> Mail {
        let parsed = mailparse::parse_mail(raw).expect("a parsable message");
        let header = |name: &str| {
            parsed
                .headers
                .iter()
                .find(|h| h.get_key_ref().eq_ignore_ascii_case(name))
                .map(|h| h.get_value())
                .unwrap_or_default()
        };
        let mut text = String::new();
        let mut html = String::new();
        for part in parsed.subparts.iter().chain(std::iter::once(&parsed)) {
            match part.ctype.mimetype.as_str() {
                "text/plain" => text = part.get_body().unwrap(),
                "text/html" => html = part.get_body().unwrap(),
                _ => {}
            }
        }
        Mail {
            envelope_to,
            subject: header("Subject"),
            to: header("To"),
            message_id: header("Message-ID"),
            alert_kind: header("X-Keyledger-Alert"),
            text,
            html,
            raw: String::from_utf8_lossy(raw).into_owned(),
        }
    }
}

#[derive(Clone)]
struct Capture {
    inbox: Arc<Mutex<Vec<Mail>>>,
    to: Vec<String>,
    data: Vec<u8>,
}

/// Addresses starting with this are refused for good (550), as a mail
/// server refuses a mailbox that does not exist.
pub const BOUNCING: &str = "bounce";
/// Addresses starting with this are put off (451), as a greylisting server does.
pub const DEFERRED: &str = "later";

impl Handler for Capture {
    fn rcpt(&mut self, to: &str) -> Response {
        let address = to.trim_start_matches('<');
        if address.starts_with(BOUNCING) {
            return response::NO_MAILBOX;
        }
        if address.starts_with(DEFERRED) {
            return response::INTERNAL_ERROR;
        }
        response::OK
    }

    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.to = to.to_vec();
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let mail = Mail::parse(&self.data, std::mem::take(&mut self.to));
        self.inbox.lock().unwrap().push(mail);
        response::OK
    }
}

/// An SMTP server on a port of its own. `reserve()` only picks the port, so
/// a test can point the mailer at it while nothing listens ("SMTP down")
/// and `start()` it later.
pub struct MailServer {
    pub port: u16,
    inbox: Arc<Mutex<Vec<Mail>>>,
    started: bool,
}

impl MailServer {
    pub fn reserve() -> MailServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        MailServer {
            port,
            inbox: Arc::default(),
            started: false,
        }
    }

    pub fn start_new() -> MailServer {
        let mut server = MailServer::reserve();
        server.start();
        server
    }

    pub fn start(&mut self) {
        assert!(!self.started, "already started");
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("the reserved SMTP port is free");
        let mut server = Server::new(Capture {
            inbox: self.inbox.clone(),
            to: vec![],
            data: vec![],
        });
        server.with_name("smtp.test").with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        self.started = true;
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn inbox(&self) -> Vec<Mail> {
        self.inbox.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages arrived; returns them all.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Mail> {
        crate::support::eventually(within, || async {
            let inbox = self.inbox();
            if inbox.len() >= n {
                return Ok(inbox);
            }
            Err(format!("expected {n} emails, got {}: {inbox:#?}", inbox.len()))
        })
        .await
    }
}
