//! The real parts of the IRC bridge's end-to-end tests: Synapse and InspIRCd started by the
//! project's scripts, the bridge as its own process, a raw-socket IRC client and Matrix users
//! through the Client-Server API.

#![allow(dead_code, unreachable_pub)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpStream, tcp::OwnedWriteHalf},
};

pub const AS_TOKEN: &str = "as_token_for_irc_tests_0123456789";
pub const HS_TOKEN: &str = "hs_token_for_irc_tests_0123456789";
pub const PROVISION_SECRET: &str = "provisioning_secret_for_irc_tests";

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts").join(name)
}

/// Whether the end-to-end suites run: `MXBRIDGE_TEST_SYNAPSE=1` (set by `scripts/test.sh`);
/// then a missing Synapse or InspIRCd fails the test.
pub fn enabled() -> bool {
    if std::env::var("MXBRIDGE_TEST_SYNAPSE").is_ok_and(|v| v == "1") {
        true
    } else {
        eprintln!("skipped: set MXBRIDGE_TEST_SYNAPSE=1 to run the IRC end-to-end suite");
        false
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A private InspIRCd, in plain text on `port` and TLS on `tls_port` (its self-signed
/// certificate in `dir/cert.pem`), stopped when dropped.
pub struct Inspircd {
    pub dir: PathBuf,
    pub port: u16,
    pub tls_port: u16,
}

impl Inspircd {
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let tls_port = free_port();
        let dir = dir.join("ircd");
        let out = Command::new("bash")
            .arg(script("inspircd.sh"))
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .arg("")
            .arg(tls_port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "InspIRCd did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir, port, tls_port }
    }

    /// The certificate TLS clients trust.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    pub fn restart(&self) {
        let out = Command::new("bash")
            .arg(script("inspircd.sh"))
            .arg("restart")
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "InspIRCd did not restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Inspircd {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script("inspircd.sh")).arg("stop").arg(&self.dir).output();
    }
}

/// A Synapse, stopped when dropped.
pub struct Synapse {
    pub dir: PathBuf,
    pub port: u16,
    pub url: String,
}

impl Synapse {
    pub fn start(dir: &Path, registration: &Path) -> Self {
        let port = free_port();
        let dir = dir.join("hs");
        let out = Command::new("bash")
            .arg(script("synapse.sh"))
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .arg(registration)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "Synapse did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir, port, url: format!("http://127.0.0.1:{port}") }
    }

    /// Registers a user; returns the access token.
    pub fn register(&self, user: &str) -> String {
        let out = Command::new("bash")
            .arg(script("synapse.sh"))
            .arg("register")
            .arg(&self.dir)
            .args([self.port.to_string().as_str(), user, "correct-horse-battery"])
            .output()
            .unwrap();
        assert!(out.status.success(), "register failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script("synapse.sh")).arg("stop").arg(&self.dir).output();
    }
}

/// The bridge's process, SIGKILLed when dropped (also when a test fails).
pub struct BridgeProcess(pub Child);

impl BridgeProcess {
    /// SIGKILL, and wait for the end.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The bridge's files: config and registration.
pub struct BridgeFiles {
    pub dir: PathBuf,
    pub port: u16,
    pub config: PathBuf,
    pub registration: PathBuf,
}

impl BridgeFiles {
    pub fn write(dir: &Path) -> Self {
        let port = free_port();
        let registration = dir.join("registration.yaml");
        std::fs::write(
            &registration,
            format!(
                "id: irc\nurl: http://127.0.0.1:{port}\nas_token: {AS_TOKEN}\nhs_token: {HS_TOKEN}\n\
                 sender_localpart: _irc_bot\nnamespaces:\n  users:\n    - exclusive: true\n      regex: '@_irc_.*:localhost'\n\
                 \x20 aliases:\n    - exclusive: true\n      regex: '#_irc_.*:localhost'\n\
                 rate_limited: false\nreceive_ephemeral: true\nde.sorunome.msc2409.push_ephemeral: true\n"
            ),
        )
        .unwrap();
        Self { dir: dir.to_owned(), port, config: dir.join("config.yaml"), registration }
    }

    pub fn write_config(&self, hs_url: &str, irc_port: u16) {
        self.write_config_for(hs_url, &format!("server: '127.0.0.1:{irc_port}'"));
    }

    /// The config with the bridge reaching the server over TLS, trusting `ca`.
    pub fn write_config_tls(&self, hs_url: &str, tls_port: u16, ca: &Path) {
        let server =
            format!("server: 'localhost:{tls_port}', tls: true, tls_ca_file: '{}'", ca.display());
        self.write_config_for(hs_url, &server);
    }

    fn write_config_for(&self, hs_url: &str, server: &str) {
        let yaml = format!(
            "homeserver: {{address: '{hs_url}', domain: localhost}}\n\
             appservice:\n  id: irc\n  address: 'http://127.0.0.1:{port}'\n  port: {port}\n  registration: '{reg}'\n  bot: {{localpart: _irc_bot}}\n  ghost_localpart_template: '_irc_{{id}}'\n\
             database: {{url: 'sqlite://{dir}/irc.db'}}\n\
             inbox: {{retry_base_ms: 100, retry_max_ms: 1000, max_attempts: 8, shutdown_grace_secs: 2}}\n\
             permissions: {{'@alice:localhost': user, '@bob:localhost': user, '@carol:localhost': relay}}\n\
             relay: {{enabled: true, admin_only: false, message_formats: {{m.text: '<{{sender_name}}> {{body}}'}}}}\n\
             provisioning: {{shared_secret: '{PROVISION_SECRET}'}}\n\
             logging: {{level: 'debug,hyper=info,h2=info,sqlx=warn,reqwest=info,hyper_util=info,html5ever=info'}}\n\
             bridge: {{{server}, throttle_burst: 10, throttle_interval_ms: 100, max_lines: 10, alias_channels: ['#lazy*']}}\n",
            port = self.port,
            reg = self.registration.display(),
            dir = self.dir.display(),
        );
        std::fs::write(&self.config, yaml).unwrap();
    }

    /// Starts the bridge process; its log goes to `bridge-N.log`. Killed when dropped.
    pub fn spawn(&self, life: u32) -> BridgeProcess {
        let log = std::fs::File::create(self.dir.join(format!("bridge-{life}.log"))).unwrap();
        Command::new(env!("CARGO_BIN_EXE_mxbridge-irc"))
            .arg("-c")
            .arg(&self.config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(BridgeProcess)
            .unwrap()
    }

    pub fn log(&self, life: u32) -> String {
        std::fs::read_to_string(self.dir.join(format!("bridge-{life}.log"))).unwrap_or_default()
    }

    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}/health/ready", self.port);
        for _ in 0..300 {
            if client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the bridge never became ready");
    }
}

/// Polls `check` every 100 ms for up to `secs` seconds.
pub async fn wait_for<T>(secs: u64, mut check: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// A Matrix user acting through the Client-Server API.
#[derive(Clone)]
pub struct Human {
    pub user_id: String,
    pub token: String,
    pub hs: String,
    http: reqwest::Client,
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Human {
    pub fn new(synapse: &Synapse, name: &str) -> Self {
        Self {
            user_id: format!("@{name}:localhost"),
            token: synapse.register(name),
            hs: synapse.url.clone(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.hs);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        assert!(status.is_success(), "{url}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub async fn dm_with_bot(&self) -> String {
        let body =
            json!({"preset": "private_chat", "is_direct": true, "invite": ["@_irc_bot:localhost"]});
        let room =
            self.call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(body)).await;
        let room = room["room_id"].as_str().unwrap().to_owned();
        let joined = wait_for(30, async || {
            let path = format!("/_matrix/client/v3/rooms/{}/joined_members", urlencode(&room));
            let members = self.call(reqwest::Method::GET, &path, None).await;
            members["joined"].get("@_irc_bot:localhost").map(|_| ())
        })
        .await;
        assert!(joined.is_some(), "the bot never joined {}'s DM", self.user_id);
        room
    }

    pub async fn send(&self, room: &str, content: Value) -> String {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/t{}",
            urlencode(room),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        );
        let sent = self.call(reqwest::Method::PUT, &path, Some(content)).await;
        sent["event_id"].as_str().unwrap().to_owned()
    }

    pub async fn say(&self, room: &str, body: &str) -> String {
        self.send(room, json!({"msgtype": "m.text", "body": body})).await
    }

    /// The room's last 200 timeline events, oldest first.
    pub async fn events(&self, room: &str) -> Vec<Value> {
        let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=200", urlencode(room));
        let page = self.call(reqwest::Method::GET, &path, None).await;
        let mut out = page["chunk"].as_array().cloned().unwrap_or_default();
        out.reverse();
        out
    }

    /// Waits for a timeline event matching `pred`.
    pub async fn wait_event(&self, room: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let found =
            wait_for(30, async || self.events(room).await.into_iter().find(|e| pred(e))).await;
        found.unwrap_or_else(|| {
            panic!("{} never saw {what} in {room}", self.user_id);
        })
    }

    /// Waits for a notice of the bot containing `text`.
    pub async fn wait_notice(&self, room: &str, text: &str) {
        self.wait_event(room, &format!("a notice with {text:?}"), |e| {
            e["sender"] == "@_irc_bot:localhost"
                && e["content"]["body"].as_str().is_some_and(|b| b.contains(text))
        })
        .await;
    }

    /// Waits for an invite to a room whose name is `name`; joins it and returns its ID.
    pub async fn join_invited(&self, name: &str) -> String {
        let room = wait_for(30, async || {
            let sync = self.call(reqwest::Method::GET, &fresh_sync(), None).await;
            let invites = sync["rooms"]["invite"].as_object()?.clone();
            invites.into_iter().find_map(|(room, data)| {
                let events = data["invite_state"]["events"].as_array()?.clone();
                events
                    .iter()
                    .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == name)
                    .then_some(room)
            })
        })
        .await;
        let Some(room) = room else {
            let sync = self.call(reqwest::Method::GET, &fresh_sync(), None).await;
            panic!("{} was never invited to {name}: {}", self.user_id, sync["rooms"]["invite"]);
        };
        let path = format!("/_matrix/client/v3/rooms/{}/join", urlencode(&room));
        self.call(reqwest::Method::POST, &path, Some(json!({}))).await;
        room
    }

    /// Joins a room by ID or alias: the room's ID, or the homeserver's status and answer.
    pub async fn try_join(&self, room: &str) -> Result<String, (u16, String)> {
        let url = format!("{}/_matrix/client/v3/join/{}", self.hs, urlencode(room));
        let res = self.http.post(&url).bearer_auth(&self.token).json(&json!({})).send().await;
        let res = res.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        if !status.is_success() {
            return Err((status.as_u16(), text));
        }
        let v: Value = serde_json::from_str(&text).unwrap();
        Ok(v["room_id"].as_str().unwrap().to_owned())
    }

    pub async fn state(&self, room: &str, kind: &str, key: &str) -> Option<Value> {
        let path =
            format!("/_matrix/client/v3/rooms/{}/state/{kind}/{}", urlencode(room), urlencode(key));
        let url = format!("{}{path}", self.hs);
        let res = self.http.get(&url).bearer_auth(&self.token).send().await.unwrap();
        if !res.status().is_success() {
            return None;
        }
        res.json().await.ok()
    }
}

/// A full sync that Synapse's cache of identical sync requests does not answer (the filter
/// differs each time).
fn fresh_sync() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000 + 1;
    let filter = urlencode(&format!("{{\"room\":{{\"timeline\":{{\"limit\":{n}}}}}}}"));
    format!("/_matrix/client/v3/sync?timeout=0&filter={filter}")
}

/// An IRC user on a raw socket: everything it reads is kept.
pub struct IrcHuman {
    pub nick: String,
    write: OwnedWriteHalf,
    lines: Arc<Mutex<Vec<String>>>,
}

impl IrcHuman {
    pub async fn connect(port: u16, nick: &str, user: &str) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (read, write) = stream.into_split();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(read);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                        kept.lock().unwrap().push(line);
                    }
                }
            }
        });
        let mut me = Self { nick: nick.to_owned(), write, lines };
        me.send(&format!("NICK {nick}")).await;
        me.send(&format!("USER {user} 0 * :{user}")).await;
        me.wait(15, |l| l.contains(" 001 ")).await;
        me
    }

    pub async fn send(&mut self, line: &str) {
        self.write.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
        // Answer the server's pings that came meanwhile.
        let pings: Vec<String> = {
            let mut lines = self.lines.lock().unwrap();
            let pings = lines.iter().filter(|l| l.starts_with("PING ")).cloned().collect();
            lines.retain(|l| !l.starts_with("PING "));
            pings
        };
        for ping in pings {
            let pong = format!("PONG {}\r\n", &ping[5..]);
            self.write.write_all(pong.as_bytes()).await.unwrap();
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a line matching `pred`; returns it.
    pub async fn wait(&self, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let found = wait_for(secs, async || self.lines().into_iter().find(|l| pred(l))).await;
        found.unwrap_or_else(|| {
            panic!("{} never read the line; it read:\n{}", self.nick, self.lines().join("\n"))
        })
    }

    /// The texts of PRIVMSGs to `target` from `nick`.
    pub fn texts_from(&self, nick: &str, target: &str) -> Vec<String> {
        let prefix = format!(":{nick}!");
        let middle = format!(" PRIVMSG {target} :");
        self.lines()
            .iter()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.split_once(&middle).map(|(_, t)| t.to_owned()))
            .collect()
    }
}

/// Prints the tail of the bridge's logs when the test fails.
pub struct LogsOnPanic(pub PathBuf);

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if let Ok(keep) = std::env::var("MXB_TEST_LOGS") {
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::copy(
                self.0.join("hs/homeserver.log"),
                Path::new(&keep).join("homeserver.log"),
            );
        }
        for life in 1..=3 {
            let path = self.0.join(format!("bridge-{life}.log"));
            if let Ok(log) = std::fs::read_to_string(&path) {
                if let Ok(keep) = std::env::var("MXB_TEST_LOGS") {
                    let _ = std::fs::create_dir_all(&keep);
                    let _ =
                        std::fs::write(Path::new(&keep).join(format!("bridge-{life}.log")), &log);
                }
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(150)..];
                eprintln!(
                    "--- {} (last {} lines)\n{}",
                    path.display(),
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
    }
}
