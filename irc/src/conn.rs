//! One connection to an IRC server, in plain text or TLS: registration with IRCv3 capability
//! negotiation (and SASL PLAIN when asked), the read half as a stream of messages, and a writer
//! task that sends our lines in the order given, within a flood limit, answering `PING` at once.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use tokio::{
    io::{
        AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf,
    },
    net::TcpStream,
    sync::mpsc,
    time::Instant,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{self, pki_types::ServerName},
};

use crate::proto::Message;

/// The capabilities we ask for when the server offers them.
const WANTED_CAPS: [&str; 9] = [
    "server-time",
    "message-tags",
    "echo-message",
    "labeled-response",
    "batch",
    "multi-prefix",
    "userhost-in-names",
    "away-notify",
    "account-tag",
];

/// How a connection logs in.
#[derive(Debug, Clone)]
pub(crate) struct ConnConfig {
    /// `host:port`.
    pub(crate) address: String,
    /// The nick asked for.
    pub(crate) nick: String,
    /// The user name (ident).
    pub(crate) username: String,
    /// The real name.
    pub(crate) realname: String,
    /// The server password (`PASS`).
    pub(crate) password: Option<String>,
    /// SASL PLAIN account and password.
    pub(crate) sasl: Option<(String, String)>,
    /// Flood control.
    pub(crate) throttle: Throttle,
    /// TLS, when the server is reached over it.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

/// A byte stream to the server: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Stream = Box<dyn Io>;

/// The TLS client setup: the system's trusted roots, or only the certificates of a PEM file
/// (a private server's own CA or self-signed certificate).
pub(crate) fn tls_config(ca_file: Option<&str>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| format!("cannot read the certificates in {path}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("{path} holds no certificate"));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("a certificate in {path}: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("the system has no trusted TLS roots (set tls_ca_file)".into());
            }
        }
    }
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

/// The host of `host:port` (an IPv6 address without its brackets).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// The flood limit: `burst` lines at once, then one every `interval`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Throttle {
    /// Lines that may go out at once.
    pub(crate) burst: u32,
    /// The pause per line beyond the burst.
    pub(crate) interval: Duration,
}

/// Why a connection could not be made or ended.
#[derive(Debug)]
pub(crate) enum ConnError {
    /// The server refused our credentials (password, SASL, a banned nick): retrying the same
    /// will not help.
    Refused(String),
    /// Anything else (network, a server restart): try again later.
    Transient(String),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(why) | Self::Transient(why) => f.write_str(why),
        }
    }
}

/// A registered connection: the reader, and the sender that writes lines.
pub(crate) struct Connection {
    reader: BufReader<ReadHalf<Stream>>,
    /// Lines read during registration that the caller has not seen yet.
    backlog: std::collections::VecDeque<Message>,
    /// The start of a line whose end has not been read yet.
    partial: Vec<u8>,
    /// The writer.
    pub(crate) sender: Sender,
    /// Our nick as the server gave it.
    pub(crate) nick: String,
    /// The capabilities the server acknowledged.
    pub(crate) caps: BTreeSet<String>,
    /// The longest `user@host` the server shows for us (from `RPL_WELCOME`), for line limits.
    pub(crate) userhost_len: usize,
    last_read: Instant,
    pinged: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("nick", &self.nick).field("caps", &self.caps).finish()
    }
}

/// The writing side of a connection, cheap to clone; lines go out in the order sent.
#[derive(Debug, Clone)]
pub(crate) struct Sender {
    lines: mpsc::UnboundedSender<String>,
    urgent: mpsc::UnboundedSender<String>,
}

impl Sender {
    /// Queues a message under the flood limit; `false` when the connection is gone.
    pub(crate) fn send(&self, message: &Message) -> bool {
        self.lines.send(message.to_line()).is_ok()
    }

    /// Sends a message ahead of the queue (`PONG`, registration).
    fn urgent(&self, message: &Message) -> bool {
        self.urgent.send(message.to_line()).is_ok()
    }

    /// Whether the connection is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.lines.is_closed()
    }
}

/// The longest line read; what is longer is cut there and the rest read as the next line.
const LINE_MAX: usize = 16 * 1024;

/// Reads one line, at most [`LINE_MAX`] bytes; `None` at the end of the stream. What is read of
/// a line stays in `partial`, so a read dropped halfway (a `select!` that took another branch)
/// loses nothing: the next call goes on where it stopped.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    partial: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    loop {
        let room = LINE_MAX.saturating_sub(partial.len()) as u64;
        let n = if room == 0 {
            0
        } else {
            (&mut *reader).take(room).read_until(b'\n', partial).await?
        };
        if n == 0 && room > 0 {
            return Ok(None);
        }
        if partial.ends_with(b"\n") || partial.len() >= LINE_MAX {
            // IRC is not always UTF-8: what is not becomes replacement characters.
            let line = String::from_utf8_lossy(partial).into_owned();
            partial.clear();
            return Ok(Some(line));
        }
    }
}

/// Writes queued lines: urgent ones at once, others in order within the flood limit.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut write: W,
    mut lines: mpsc::UnboundedReceiver<String>,
    mut urgent: mpsc::UnboundedReceiver<String>,
    throttle: Throttle,
) {
    let burst = f64::from(throttle.burst.max(1));
    let per_line = throttle.interval.as_secs_f64();
    let mut tokens = burst;
    let mut last = Instant::now();
    loop {
        let line = tokio::select! {
            biased;
            Some(line) = urgent.recv() => line,
            line = lines.recv() => {
                let Some(line) = line else { break };
                if per_line > 0.0 {
                    loop {
                        let now = Instant::now();
                        tokens = (tokens + (now - last).as_secs_f64() / per_line).min(burst);
                        last = now;
                        if tokens >= 1.0 {
                            break;
                        }
                        let wait = Duration::from_secs_f64((1.0 - tokens) * per_line);
                        tracing::trace!(wait_ms = wait.as_millis(), "flood limit: a line waits");
                        tokio::select! {
                            biased;
                            Some(first) = urgent.recv() => {
                                if put(&mut write, first).await.is_err() {
                                    return;
                                }
                            }
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                    tokens -= 1.0;
                }
                line
            }
        };
        if put(&mut write, line).await.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}

async fn put<W: AsyncWrite + Unpin>(write: &mut W, line: String) -> std::io::Result<()> {
    let mut bytes = line.into_bytes();
    bytes.extend_from_slice(b"\r\n");
    write.write_all(&bytes).await?;
    // A TLS stream holds what it encrypted until flushed.
    write.flush().await
}

/// How long registration may take.
const REGISTER_WITHIN: Duration = Duration::from_secs(30);

impl Connection {
    /// Connects and registers.
    pub(crate) async fn connect(config: &ConnConfig) -> Result<Self, ConnError> {
        let stream = tokio::time::timeout(Duration::from_secs(10), Self::open(config))
            .await
            .map_err(|_| ConnError::Transient("connecting timed out".into()))??;
        let (read, write) = tokio::io::split(stream);
        let (lines, lines_rx) = mpsc::unbounded_channel();
        let (urgent, urgent_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(write, lines_rx, urgent_rx, config.throttle));
        let mut conn = Self {
            reader: BufReader::new(read),
            backlog: std::collections::VecDeque::new(),
            partial: Vec::with_capacity(512),
            sender: Sender { lines, urgent },
            nick: config.nick.clone(),
            caps: BTreeSet::new(),
            userhost_len: 0,
            last_read: Instant::now(),
            pinged: false,
        };
        tokio::time::timeout(REGISTER_WITHIN, conn.register(config))
            .await
            .map_err(|_| ConnError::Transient("registration timed out".into()))??;
        Ok(conn)
    }

    /// The TCP connection, and the TLS handshake over it when asked for.
    async fn open(config: &ConnConfig) -> Result<Stream, ConnError> {
        let tcp = TcpStream::connect(&config.address)
            .await
            .map_err(|e| ConnError::Transient(format!("cannot connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &config.tls else { return Ok(Box::new(tcp)) };
        let host = host_of(&config.address);
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| ConnError::Refused(format!("{host} is no TLS server name: {e}")))?;
        let stream = TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| ConnError::Transient(format!("TLS with {host} failed: {e}")))?;
        Ok(Box::new(stream))
    }

    async fn register(&mut self, config: &ConnConfig) -> Result<(), ConnError> {
        let send = |m: Message| self.sender.urgent(&m);
        send(Message::new("CAP", &["LS", "302"]));
        if let Some(password) = &config.password {
            send(Message::new("PASS", &[password]));
        }
        send(Message::new("NICK", &[&config.nick]));
        send(Message::new("USER", &[&config.username, "0", "*", &config.realname]));
        let mut offered = BTreeSet::new();
        let mut tries = 0;
        let mut cap_done = false;
        loop {
            let Some(line) =
                read_line(&mut self.reader, &mut self.partial).await.map_err(io_transient)?
            else {
                return Err(ConnError::Transient("the server closed the connection".into()));
            };
            let Some(m) = Message::parse(&line) else { continue };
            match m.command.as_str() {
                "PING" => {
                    self.sender.urgent(&Message::new("PONG", &[m.param(0)]));
                }
                "CAP" => match m.param(1) {
                    "LS" => {
                        let (more, list) = if m.param(2) == "*" {
                            (true, m.param(3))
                        } else {
                            (false, m.param(2))
                        };
                        for cap in list.split_whitespace() {
                            offered.insert(cap.split_once('=').map_or(cap, |(c, _)| c).to_owned());
                        }
                        if !more {
                            let mut want: Vec<&str> = WANTED_CAPS
                                .iter()
                                .copied()
                                .filter(|c| offered.contains(*c))
                                .collect();
                            if config.sasl.is_some() && offered.contains("sasl") {
                                want.push("sasl");
                            } else if config.sasl.is_some() {
                                return Err(ConnError::Refused("the server offers no SASL".into()));
                            }
                            if want.is_empty() {
                                self.sender.urgent(&Message::new("CAP", &["END"]));
                                cap_done = true;
                            } else {
                                self.sender.urgent(&Message::new("CAP", &["REQ", &want.join(" ")]));
                            }
                        }
                    }
                    "ACK" => {
                        self.caps.extend(m.param(2).split_whitespace().map(str::to_owned));
                        if self.caps.contains("sasl") && config.sasl.is_some() {
                            self.sender.urgent(&Message::new("AUTHENTICATE", &["PLAIN"]));
                        } else if !cap_done {
                            self.sender.urgent(&Message::new("CAP", &["END"]));
                            cap_done = true;
                        }
                    }
                    "NAK" if !cap_done => {
                        self.sender.urgent(&Message::new("CAP", &["END"]));
                        cap_done = true;
                    }
                    _ => {}
                },
                "AUTHENTICATE" if m.param(0) == "+" => {
                    if let Some((account, password)) = &config.sasl {
                        let plain = format!("{account}\0{account}\0{password}");
                        self.sender
                            .urgent(&Message::new("AUTHENTICATE", &[&base64(plain.as_bytes())]));
                    }
                }
                // Logged in, or SASL succeeded.
                "900" => {}
                "903" => {
                    self.sender.urgent(&Message::new("CAP", &["END"]));
                    cap_done = true;
                }
                "902" | "904" | "905" | "906" | "908" => {
                    return Err(ConnError::Refused(format!("SASL failed: {}", m.param(1))));
                }
                "001" => {
                    self.nick = m.param(0).to_owned();
                    // "Welcome ... nick!user@host"
                    let welcome = m.params.last().map_or("", String::as_str);
                    self.userhost_len = welcome
                        .rsplit(' ')
                        .next()
                        .and_then(|w| w.split_once('!'))
                        .map_or(0, |(_, uh)| uh.len());
                    self.backlog.push_back(m);
                    return Ok(());
                }
                // Nick in use or unavailable: try with an underscore, a few times.
                "433" | "437" => {
                    tries += 1;
                    if tries > 3 {
                        return Err(ConnError::Refused(format!(
                            "the nick {} is taken",
                            config.nick
                        )));
                    }
                    self.nick.push('_');
                    self.sender.urgent(&Message::new("NICK", &[&self.nick]));
                }
                "432" => {
                    return Err(ConnError::Refused(format!(
                        "the nick {} is not allowed",
                        config.nick
                    )));
                }
                "464" | "465" => {
                    return Err(ConnError::Refused(m.params.last().cloned().unwrap_or_default()));
                }
                "ERROR" => {
                    let why = m.param(0).to_owned();
                    return Err(ConnError::Transient(format!("the server said: {why}")));
                }
                _ => self.backlog.push_back(m),
            }
        }
    }

    /// The next message if a whole line of it has been read already (no waiting), else
    /// `None`. `PING` and the like are left for [`Connection::next`].
    pub(crate) fn next_buffered(&mut self) -> Option<Message> {
        if let Some(m) = self.backlog.pop_front() {
            return Some(m);
        }
        if !self.partial.is_empty() {
            return None; // The buffer holds the rest of that line.
        }
        let buf = self.reader.buffer();
        let end = buf.iter().position(|&b| b == b'\n')?;
        let line = String::from_utf8_lossy(&buf[..=end]).into_owned();
        self.reader.consume(end + 1);
        self.last_read = Instant::now();
        Message::parse(&line)
    }

    /// Puts a message back: [`Connection::next`] returns it first.
    pub(crate) fn push_back(&mut self, m: Message) {
        self.backlog.push_front(m);
    }

    /// The next message from the server (`PING` is answered here). Without anything read for
    /// a minute we ping the server; without an answer in another minute the connection is
    /// taken for dead.
    ///
    /// Cancel safe: dropped before it returns, it loses no line.
    pub(crate) async fn next(&mut self) -> Result<Message, ConnError> {
        // Lines put back or read with the last one, handled before waiting for more: a `PING`
        // among them is answered like any other.
        while let Some(m) = self.next_buffered() {
            match m.command.as_str() {
                "PING" => {
                    self.sender.urgent(&Message::new("PONG", &[m.param(0)]));
                }
                "PONG" => {}
                "ERROR" => {
                    return Err(ConnError::Transient(format!("the server said: {}", m.param(0))));
                }
                _ => return Ok(m),
            }
        }
        loop {
            let deadline = self.last_read + Duration::from_secs(60);
            let line = tokio::select! {
                line = read_line(&mut self.reader, &mut self.partial) => line.map_err(io_transient)?,
                () = tokio::time::sleep_until(deadline) => {
                    if self.pinged {
                        return Err(ConnError::Transient("the server stopped answering".into()));
                    }
                    self.pinged = true;
                    self.last_read = Instant::now();
                    self.sender.urgent(&Message::new("PING", &["mxbridge"]));
                    continue;
                }
            };
            let Some(line) = line else {
                return Err(ConnError::Transient("the server closed the connection".into()));
            };
            self.last_read = Instant::now();
            self.pinged = false;
            let Some(m) = Message::parse(&line) else { continue };
            match m.command.as_str() {
                "PING" => {
                    self.sender.urgent(&Message::new("PONG", &[m.param(0)]));
                }
                "PONG" => {}
                "ERROR" => {
                    return Err(ConnError::Transient(format!("the server said: {}", m.param(0))));
                }
                _ => return Ok(m),
            }
        }
    }
}

fn io_transient(e: std::io::Error) -> ConnError {
    ConnError::Transient(format!("connection lost: {e}"))
}

/// Standard base64 with padding (for `AUTHENTICATE`).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_without_port_or_brackets() {
        assert_eq!(host_of("irc.example.org:6697"), "irc.example.org");
        assert_eq!(host_of("[::1]:6697"), "::1");
        assert_eq!(host_of("127.0.0.1:6667"), "127.0.0.1");
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_an_error() {
        let err = tls_config(Some("/nonexistent/ca.pem")).unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let dir = std::env::temp_dir().join(format!("irc-empty-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate\n").unwrap();
        let err = tls_config(Some(dir.to_str().unwrap())).unwrap_err();
        assert!(err.contains("no certificate"), "{err}");
        std::fs::remove_file(dir).unwrap();
    }

    #[tokio::test]
    async fn lines_are_bounded_and_a_dropped_read_loses_nothing() {
        // A line longer than the bound is cut there; the rest is the next line.
        let long = vec![b'x'; LINE_MAX + 10];
        let input = [long.as_slice(), b"\r\nPING :a\r\n"].concat();
        let mut reader = BufReader::new(input.as_slice());
        let mut partial = Vec::new();
        let first = read_line(&mut reader, &mut partial).await.unwrap().unwrap();
        assert_eq!(first.len(), LINE_MAX);
        assert_eq!(read_line(&mut reader, &mut partial).await.unwrap().unwrap(), "xxxxxxxxxx\r\n");
        assert_eq!(read_line(&mut reader, &mut partial).await.unwrap().unwrap(), "PING :a\r\n");
        assert_eq!(read_line(&mut reader, &mut partial).await.unwrap(), None);

        // Half a line, the read dropped while it waits for the rest: the next read finishes it.
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = BufReader::new(rx);
        let mut partial = Vec::new();
        tx.write_all(b"PRIVMSG #a :hel").await.unwrap();
        let waited =
            tokio::time::timeout(Duration::from_millis(50), read_line(&mut reader, &mut partial))
                .await;
        assert!(waited.is_err(), "no whole line yet");
        tx.write_all(b"lo\r\n").await.unwrap();
        let line = read_line(&mut reader, &mut partial).await.unwrap().unwrap();
        assert_eq!(line, "PRIVMSG #a :hello\r\n");
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"a\0a\0pw"), "YQBhAHB3");
    }

    /// The writer keeps the order of lines and spaces them beyond the burst.
    #[tokio::test(start_paused = true)]
    async fn the_flood_limit_spaces_lines_and_keeps_their_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_, write) = client.into_split();
        let (lines, lines_rx) = mpsc::unbounded_channel();
        let (urgent, urgent_rx) = mpsc::unbounded_channel();
        let throttle = Throttle { burst: 2, interval: Duration::from_millis(500) };
        tokio::spawn(write_loop(write, lines_rx, urgent_rx, throttle));
        let start = Instant::now();
        for i in 0..6 {
            lines.send(format!("PRIVMSG #c :{i}")).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        urgent.send("PONG x".into()).unwrap();
        let mut reader = BufReader::new(server);
        let mut got = Vec::new();
        for _ in 0..7 {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            got.push((line.trim_end().to_owned(), start.elapsed()));
        }
        let lines: Vec<&str> =
            got.iter().map(|(l, _)| l.as_str()).filter(|l| l.starts_with("PRIVMSG")).collect();
        assert_eq!(lines, (0..6).map(|i| format!("PRIVMSG #c :{i}")).collect::<Vec<_>>());
        // Two at once, then one per half second: the sixth after two seconds.
        let last = got.iter().rfind(|(l, _)| l.starts_with("PRIVMSG")).unwrap().1;
        assert!(
            last >= Duration::from_millis(1900) && last < Duration::from_millis(2600),
            "{last:?}"
        );
        // The PONG did not wait for the queue.
        let pong = got.iter().position(|(l, _)| l == "PONG x").unwrap();
        assert!(pong < 6, "{got:?}");
    }
}
