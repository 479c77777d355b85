//! How a `BridgeError` reads: each cause once.

use std::{error::Error, fmt, io};

use mxbridge::BridgeError;

/// An error whose message already holds its source's, as many libraries' do.
#[derive(Debug)]
struct Says(io::Error);

impl fmt::Display for Says {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request failed: {}", self.0)
    }
}

impl Error for Says {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

/// An error that prints only itself and names its source.
#[derive(Debug)]
struct Wraps(&'static str, Option<Box<Wraps>>);

impl fmt::Display for Wraps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Error for Wraps {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.1.as_deref().map(|e| e as _)
    }
}

fn refused() -> io::Error {
    io::Error::from(io::ErrorKind::ConnectionRefused)
}

#[test]
fn a_cause_the_message_already_says_is_not_repeated() {
    let refused_text = refused().to_string();
    let e = BridgeError::from(Says(refused()));
    assert_eq!(e.to_string(), format!("request failed: {refused_text}"));
    // An error that forwards its text to its source.
    let e = BridgeError::from(Wraps("same", Some(Box::new(Wraps("same", None)))));
    assert_eq!(e.to_string(), "same");
}

#[test]
fn causes_the_message_does_not_say_are_added_in_order() {
    let chain =
        Wraps("outer", Some(Box::new(Wraps("middle", Some(Box::new(Wraps("inner", None)))))));
    assert_eq!(BridgeError::from(chain).to_string(), "outer: middle: inner");
    assert_eq!(BridgeError::new("plain").to_string(), "plain");
}

/// A refused connection, as the homeserver client and the database report it (both print
/// their source in their own message), says each thing once.
#[tokio::test]
async fn a_refused_connection_reads_once() {
    use sqlx::Connection as _;
    mxbridge::install_crypto_provider();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let http = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/")).send().await;
    let text = BridgeError::from(mxbridge::client::Error::from(http.unwrap_err())).to_string();
    for said in ["error sending request", "connection refused"] {
        assert_eq!(text.to_lowercase().matches(said).count(), 1, "{text}");
    }
    let db = sqlx::PgConnection::connect(&format!("postgres://x@127.0.0.1:{port}/x")).await;
    let text = BridgeError::from(db.unwrap_err()).to_string();
    assert_eq!(text.to_lowercase().matches("connection refused").count(), 1, "{text}");
}
