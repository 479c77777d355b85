//! End-to-end encryption with a real encrypting client: humans are matrix-nio clients with olm
//! (tests/e2ee/human.py, installed by scripts/nio.sh), each a child process driven by one JSON
//! command a line. First the client alone against a real Synapse, so the harness is proven
//! real; then the webhook bridge in encrypted rooms: what a human sends encrypted leaves the
//! outgoing hook in plaintext, what is POSTed reaches the human encrypted by the bridge device,
//! and a restarted bridge sends no new room key.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use ruma::serde::{Base64, base64::Standard};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use crate::synapse::{Synapse, cs, enabled, urlencode};

/// How long one command may take before the test fails (a `wait_*` command's own timeout is
/// shorter and answers first).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a `wait_*` command waits, in seconds (the whole suite may run beside it).
const WAIT_SECS: u64 = 60;
/// The password `Synapse::register` gives every user.
const PASSWORD: &str = "correct-horse-battery";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The nio venv's python: `scripts/nio.sh python` installs it once per test process and fails
/// the test loudly when it cannot.
fn nio_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(root().join("scripts/nio.sh"))
            .arg("python")
            .output()
            .expect("run scripts/nio.sh");
        assert!(
            out.status.success(),
            "scripts/nio.sh could not install the encrypting client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// A human with an encrypting client (matrix-nio + olm) in a child process, its olm store in
/// `store`. Killed when dropped.
pub struct Human {
    pub user_id: String,
    pub device_id: String,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    store: PathBuf,
}

impl Human {
    /// Logs `user` (registered with `Synapse::register`) in with a new device whose olm store
    /// lives in `store`, or takes up the device an earlier run left in `store`.
    pub async fn start(synapse: &Synapse, user: &str, store: &Path) -> Self {
        std::fs::create_dir_all(store).unwrap();
        let stderr = std::fs::File::create(store.join("human.log")).unwrap();
        let mut child = Command::new(nio_python())
            .arg(root().join("tests/e2ee/human.py"))
            .args(["--homeserver", &synapse.url, "--user", &format!("@{user}:localhost")])
            .args(["--password", PASSWORD, "--store"])
            .arg(store)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start tests/e2ee/human.py");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut human = Self {
            user_id: String::new(),
            device_id: String::new(),
            child,
            stdin,
            stdout,
            store: store.to_owned(),
        };
        let ready = human.answer("start").await;
        human.user_id = ready["user_id"].as_str().unwrap().to_owned();
        human.device_id = ready["device_id"].as_str().unwrap().to_owned();
        human
    }

    /// The next answer line; panics with the client's log when it failed or never came.
    async fn answer(&mut self, what: &str) -> Value {
        let line = tokio::time::timeout(COMMAND_TIMEOUT, self.stdout.next_line()).await;
        let line = match line {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => self.fail(what, "the client exited"),
            Ok(Err(e)) => self.fail(what, &format!("reading its answer: {e}")),
            Err(_) => self.fail(what, &format!("no answer in {COMMAND_TIMEOUT:?}")),
        };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| self.fail(what, &format!("answer {line:?} is not JSON: {e}")));
        if v["ok"] != true {
            self.fail(what, &format!("{}", v["error"]));
        }
        v
    }

    fn fail(&self, what: &str, why: &str) -> ! {
        let log = std::fs::read_to_string(self.store.join("human.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{} ({}): {what}: {why}\nits log ends:\n{}",
            self.user_id,
            self.device_id,
            tail.join("\n")
        );
    }

    /// Sends one command (`{"cmd": ..., args}`) and returns its answer; panics on `ok: false`.
    pub async fn call(&mut self, command: Value) -> Value {
        let what = command.to_string();
        let line = format!("{what}\n");
        if let Err(e) = self.stdin.write_all(line.as_bytes()).await {
            self.fail(&what, &format!("writing the command: {e}"));
        }
        self.stdin.flush().await.unwrap();
        self.answer(&what).await
    }

    /// Creates an encrypted room inviting `invite`; returns its id.
    pub async fn create_encrypted_room(&mut self, invite: &[&str]) -> String {
        let v = self.call(json!({"cmd": "create_room", "invite": invite})).await;
        v["room_id"].as_str().unwrap().to_owned()
    }

    /// Waits for an invite to `room` and joins.
    pub async fn accept(&mut self, room: &str) {
        self.call(json!({"cmd": "wait_invite", "room_id": room, "timeout": WAIT_SECS})).await;
        self.call(json!({"cmd": "join", "room_id": room})).await;
    }

    /// Waits until this client's synced view shows `user` joined to `room`.
    pub async fn wait_joined(&mut self, room: &str, user: &str) {
        let wait =
            json!({"cmd": "wait_member", "room_id": room, "user_id": user, "timeout": WAIT_SECS});
        self.call(wait).await;
    }

    /// Sends an (encrypted) text; returns the event id.
    pub async fn send_text(&mut self, room: &str, body: &str) -> String {
        let v = self.call(json!({"cmd": "send_text", "room_id": room, "body": body})).await;
        v["event_id"].as_str().unwrap().to_owned()
    }

    /// Uploads `data` encrypted and sends it as an m.image; returns the answer (event_id, url,
    /// sha256 of the plaintext).
    pub async fn send_image(&mut self, room: &str, name: &str, data: &[u8]) -> Value {
        let path = self.store.join(name);
        std::fs::write(&path, data).unwrap();
        self.call(json!({
            "cmd": "send_image", "room_id": room, "path": path, "name": name,
            "mimetype": "image/png",
        }))
        .await
    }

    /// The next message from `sender` in `room`, decrypted (see `wait_message` in human.py).
    pub async fn next_message(&mut self, room: &str, sender: &str) -> Value {
        let wait =
            json!({"cmd": "wait_message", "room_id": room, "sender": sender, "timeout": WAIT_SECS});
        self.call(wait).await
    }

    /// How many to-device room keys this client has received (not forwarded ones).
    pub async fn room_keys(&mut self) -> Value {
        self.call(json!({"cmd": "room_keys"})).await
    }

    /// Asks the client to stop and waits for it to exit.
    pub async fn quit(mut self) {
        self.call(json!({"cmd": "quit"})).await;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        assert!(matches!(status, Ok(Ok(s)) if s.success()), "{}: exit {status:?}", self.user_id);
    }
}

/// A PNG-looking payload of `len` bytes, different for every `seed`.
pub fn image_bytes(seed: u8, len: usize) -> Vec<u8> {
    let mut data = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.push(x.to_le_bytes()[0]);
    }
    data
}

pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An event as the homeserver holds it (what travels: ciphertext for an encrypted room).
pub(crate) async fn raw_event(synapse: &Synapse, token: &str, room: &str, event_id: &str) -> Value {
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/event/{}",
        synapse.url,
        urlencode(room),
        urlencode(event_id)
    );
    cs(&crate::common::http(), reqwest::Method::GET, url, token, None).await
}

/// The registration of a Synapse where no bridge runs (its URL answers nothing).
fn idle_registration() -> String {
    crate::common::registration_yaml("http://127.0.0.1:9")
}

#[tokio::test]
async fn two_nio_humans_exchange_an_encrypted_text_and_image_through_synapse() {
    if !enabled() {
        return;
    }
    let synapse = Synapse::start(&idle_registration());
    let alice_token = synapse.register("alice");
    let bob_token = synapse.register("bob");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = Human::start(&synapse, "alice", &dir.path().join("alice")).await;
    let mut bob = Human::start(&synapse, "bob", &dir.path().join("bob")).await;
    assert_ne!(alice.device_id, bob.device_id);

    let room = alice.create_encrypted_room(&[&bob.user_id]).await;
    bob.accept(&room).await;
    alice.wait_joined(&room, &bob.user_id).await;

    // A text: on the server only ciphertext, to Bob the plaintext.
    let sent = alice.send_text(&room, "the eagle lands at noon").await;
    let raw = raw_event(&synapse, &alice_token, &room, &sent).await;
    assert_eq!(raw["type"], "m.room.encrypted", "{raw}");
    assert_eq!(raw["content"]["algorithm"], "m.megolm.v1.aes-sha2", "{raw}");
    assert_eq!(raw["content"]["device_id"], alice.device_id.as_str(), "{raw}");
    assert!(!raw.to_string().contains("eagle"), "plaintext on the server: {raw}");
    let session = alice.call(json!({"cmd": "session", "room_id": room})).await;
    assert_eq!(session["shared_with"], json!([[bob.user_id, bob.device_id]]), "{session}");
    let got = bob.next_message(&room, &alice.user_id).await;
    assert_eq!(got["event_id"], sent.as_str(), "{got}");
    assert_eq!(got["body"], "the eagle lands at noon", "{got}");
    assert_eq!(got["msgtype"], "m.text", "{got}");
    assert_eq!(got["decrypted"], true, "{got}");
    assert_eq!(got["libolm"], true, "libolm decrypts it the same: {got}");

    // An image: encrypted upload, the key only inside the encrypted event.
    let data = image_bytes(7, 40_000);
    let image = alice.send_image(&room, "map.png", &data).await;
    assert_eq!(image["sha256"], sha256_hex(&data).as_str());
    let raw = raw_event(&synapse, &bob_token, &room, image["event_id"].as_str().unwrap()).await;
    assert_eq!(raw["type"], "m.room.encrypted", "{raw}");
    let got = bob.next_message(&room, &alice.user_id).await;
    assert_eq!(got["msgtype"], "m.image", "{got}");
    assert_eq!(got["encrypted_file"], true, "{got}");
    assert_eq!(got["decrypted"], true, "{got}");
    assert_eq!(got["url"], image["url"], "{got}");
    assert_eq!(got["size"], data.len(), "{got}");
    assert_eq!(got["sha256"], sha256_hex(&data).as_str(), "the image decrypts to what was sent");
    // What the media repository holds is ciphertext, not the image.
    let mxc = image["url"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned();
    let stored = crate::common::http()
        .get(format!("{}/_matrix/client/v1/media/download/{mxc}", synapse.url))
        .bearer_auth(&bob_token)
        .send()
        .await
        .unwrap();
    assert!(stored.status().is_success());
    let stored = stored.bytes().await.unwrap();
    assert_eq!(stored.len(), data.len(), "AES-CTR keeps the length");
    assert_ne!(stored.as_ref(), data.as_slice(), "the media repository holds the plaintext");

    // Bob answers; Alice decrypts. Each received exactly one room key, from the other.
    bob.send_text(&room, "copy that").await;
    let got = alice.next_message(&room, &bob.user_id).await;
    assert_eq!(got["body"], "copy that", "{got}");
    assert_eq!(got["decrypted"], true, "{got}");
    let keys = bob.room_keys().await;
    assert_eq!(keys["by_sender"], json!({"@alice:localhost": 1}), "{keys}");
    let keys = alice.room_keys().await;
    assert_eq!(keys["by_sender"], json!({"@bob:localhost": 1}), "{keys}");
    let stuck = bob.call(json!({"cmd": "undecryptable"})).await;
    assert_eq!(stuck["events"], json!([]), "{stuck}");

    // A latecomer got no key for what was said before she came: the client says so, and reads
    // what comes after (Alice's client makes a new session when the members change).
    synapse.register("carol");
    let mut carol = Human::start(&synapse, "carol", &dir.path().join("carol")).await;
    alice.call(json!({"cmd": "invite", "room_id": room, "user_id": carol.user_id})).await;
    carol.accept(&room).await;
    alice.wait_joined(&room, &carol.user_id).await;
    let stuck = carol.call(json!({"cmd": "undecryptable"})).await;
    let stuck: Vec<&str> = stuck["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert!(stuck.contains(&sent.as_str()), "the first text is undecryptable to Carol: {stuck:?}");
    let welcome = alice.send_text(&room, "welcome carol").await;
    let got = carol.next_message(&room, &alice.user_id).await;
    assert_eq!(got["event_id"], welcome.as_str(), "{got}");
    assert_eq!(got["body"], "welcome carol", "{got}");

    alice.quit().await;
    bob.quit().await;
    carol.quit().await;
}

#[tokio::test]
async fn a_restarted_nio_human_keeps_its_device_and_reads_what_came_while_it_was_away() {
    if !enabled() {
        return;
    }
    let synapse = Synapse::start(&idle_registration());
    synapse.register("alice");
    synapse.register("bob");
    let dir = tempfile::tempdir().unwrap();
    let bob_store = dir.path().join("bob");
    let mut alice = Human::start(&synapse, "alice", &dir.path().join("alice")).await;
    let mut bob = Human::start(&synapse, "bob", &bob_store).await;
    let room = alice.create_encrypted_room(&[&bob.user_id]).await;
    bob.accept(&room).await;
    alice.wait_joined(&room, &bob.user_id).await;
    alice.send_text(&room, "before").await;
    assert_eq!(bob.next_message(&room, &alice.user_id).await["body"], "before");
    let device = bob.device_id.clone();
    bob.quit().await;

    // While Bob is away Alice speaks again in the same megolm session.
    alice.send_text(&room, "while you were out").await;
    let mut bob = Human::start(&synapse, "bob", &bob_store).await;
    assert_eq!(bob.device_id, device, "the store's device is taken up again");
    let got = bob.next_message(&room, &alice.user_id).await;
    assert_eq!(got["body"], "while you were out", "{got}");
    assert_eq!(got["decrypted"], true, "{got}");
    // No new key: the session Bob kept in his store decrypts it.
    assert_eq!(bob.room_keys().await["count"], 0);

    alice.quit().await;
    bob.quit().await;
}

// ------------------------------------------------------------------------------------------
// The webhook bridge in encrypted rooms: a nio human and the bridge device.

pub(crate) const BOT: &str = "@_t_bot:localhost";
/// The ghost of the webhook username "CI Bot".
pub(crate) const CI_GHOST: &str = "@_t__c_i=20_bot:localhost";

/// What the bridge device needs in the registration (as `generate-registration` writes it with
/// `encryption.allow`).
pub(crate) fn crypto_registration(url: &str) -> String {
    format!(
        "{}io.element.msc4190: true\norg.matrix.msc3202: true\n",
        crate::common::registration_yaml(url)
    )
}

pub(crate) const ENCRYPTION: &str = "encryption: {allow: true, default: true}\n";

/// Waits until the bot's device keys are published (the bridge device started).
pub(crate) async fn wait_for_bridge_device(synapse: &Synapse, token: &str) -> String {
    let client = reqwest::Client::new();
    for _ in 0..600 {
        let keys = cs(
            &client,
            reqwest::Method::POST,
            format!("{}/_matrix/client/v3/keys/query", synapse.url),
            token,
            Some(json!({"device_keys": {BOT: []}})),
        )
        .await;
        if let Some(device) = keys["device_keys"][BOT].as_object().and_then(|d| d.keys().next()) {
            return device.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the bridge device never published its keys");
}

/// The next message from `sender` whose body contains `part` (earlier ones are skipped).
pub(crate) async fn message_containing(
    human: &mut Human,
    room: &str,
    sender: &str,
    part: &str,
) -> Value {
    for _ in 0..10 {
        let got = human.next_message(room, sender).await;
        if got["body"].as_str().is_some_and(|b| b.contains(part)) {
            return got;
        }
    }
    panic!("no message from {sender} containing {part:?}");
}

/// Waits until the outgoing receiver got a message with `body`; returns its event part.
pub(crate) async fn outgoing_message(received: &Mutex<Vec<Value>>, body: &str) -> Value {
    for _ in 0..300 {
        let found = received.lock().unwrap().iter().find(|p| p["event"]["body"] == body).cloned();
        if let Some(post) = found {
            return post["event"].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the outgoing hook never got {body:?}; it got {:?}", received.lock().unwrap());
}

pub(crate) async fn post_hook(hook: &str, text: &str) -> String {
    let res = reqwest::Client::new()
        .post(hook)
        .json(&json!({"text": text, "username": "CI Bot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    answer["event_id"].as_str().unwrap().to_owned()
}

/// Alice (a nio human) in an encrypted room with the webhook bridge's bot, with a hook whose
/// outgoing side posts to a receiver in this process.
pub(crate) struct HookRoom {
    pub alice: Human,
    pub room: String,
    /// The hook's secret URL.
    pub hook: String,
    /// What the outgoing side posted.
    pub received: Arc<Mutex<Vec<Value>>>,
}

/// Alice makes an encrypted room with the bot (whose device is `bot_device`); her commands
/// reach it encrypted, and its answers reach her encrypted: she creates a hook and points its
/// outgoing side at a receiver.
pub(crate) async fn hook_room(synapse: &Synapse, store: &Path, bot_device: &str) -> HookRoom {
    let (out_url, received) = crate::webhook::outgoing_receiver().await;
    let mut alice = Human::start(synapse, "alice", store).await;
    let room = alice.create_encrypted_room(&[BOT]).await;
    alice.wait_joined(&room, BOT).await;
    alice.send_text(&room, "!webhook create hook1").await;
    // Her client shared its room key with the bridge device (from here on, a failure is the
    // bridge's).
    let session = alice.call(json!({"cmd": "session", "room_id": room})).await;
    let shared = session["shared_with"].as_array().unwrap();
    assert!(shared.contains(&json!([BOT, bot_device])), "{session}");
    let created = message_containing(&mut alice, &room, BOT, "/webhook/").await;
    assert_eq!(created["decrypted"], true, "the bot answers encrypted: {created}");
    let body = created["body"].as_str().unwrap();
    let hook = body[body.find("http://").unwrap()..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('.')
        .to_owned();
    alice.send_text(&room, &format!("!webhook outgoing hook1 {out_url}")).await;
    message_containing(&mut alice, &room, BOT, "now go to").await;
    HookRoom { alice, room, hook, received }
}

async fn the_webhook_bridge_reads_and_writes_an_encrypted_room(backend: &str) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let registration = crypto_registration(&format!("http://127.0.0.1:{port}"));
    let synapse = Synapse::start(&registration);
    let alice_token = synapse.register("alice");
    let dir = tempfile::tempdir().unwrap();
    let db = crate::common::fresh_database(backend, dir.path()).await;
    let start = || {
        crate::webhook::start_bridge_with(port, &synapse.url, &db.url, &registration, ENCRYPTION)
    };
    let bridge = start().await;
    let bot_device = wait_for_bridge_device(&synapse, &alice_token).await;
    let HookRoom { mut alice, room, hook, received } =
        hook_room(&synapse, &dir.path().join("alice"), &bot_device).await;

    // Matrix to remote: Alice's encrypted message leaves through the outgoing hook in plaintext.
    let sent = alice.send_text(&room, "meet at the usual place").await;
    let raw = raw_event(&synapse, &alice_token, &room, &sent).await;
    assert_eq!(raw["type"], "m.room.encrypted", "{raw}");
    let out = outgoing_message(&received, "meet at the usual place").await;
    assert_eq!(out["event_id"], sent.as_str(), "{out}");
    assert_eq!(out["sender"], alice.user_id.as_str(), "{out}");

    // Remote to Matrix: a POST appears to Alice from the ghost, encrypted by the bridge device.
    let posted = post_hook(&hook, "build passed").await;
    let raw = raw_event(&synapse, &alice_token, &room, &posted).await;
    assert_eq!(raw["type"], "m.room.encrypted", "the bridge sent plaintext: {raw}");
    assert_eq!(raw["sender"], CI_GHOST, "{raw}");
    assert_eq!(raw["content"]["device_id"], bot_device.as_str(), "{raw}");
    let got = alice.next_message(&room, CI_GHOST).await;
    assert_eq!(got["event_id"], posted.as_str(), "{got}");
    assert_eq!(got["body"], "build passed", "{got}");
    assert_eq!(got["decrypted"], true, "{got}");
    assert_eq!(got["libolm"], true, "libolm decrypts it the same: {got}");

    // An encrypted image from Alice: the bridge decrypts its event, downloads and decrypts the
    // file, and the outgoing hook gets the image itself.
    let data = image_bytes(3, 20_000);
    let image = alice.send_image(&room, "diagram.png", &data).await;
    let out = outgoing_message(&received, "diagram.png").await;
    assert_eq!(out["event_id"], image["event_id"], "{out}");
    let media = &out["media"];
    assert_eq!(media["sha256"], sha256_hex(&data).as_str(), "the file decrypted: {media:#}");
    assert_eq!(media["sha256"], image["sha256"], "what Alice sent: {media:#}");
    assert_eq!(media["size"], data.len(), "{media:#}");
    assert_eq!(media["filename"], "diagram.png", "{media:#}");
    assert_eq!(media["content_type"], "image/png", "{media:#}");
    let carried = Base64::<Standard>::parse(media["data_base64"].as_str().unwrap()).unwrap();
    assert_eq!(carried.as_bytes(), data.as_slice(), "the outgoing hook gets the image");

    // An image POSTed to the hook: uploaded encrypted, sent in an encrypted event; Alice
    // decrypts both and gets the bytes that were posted.
    let png = image_bytes(11, 30_000);
    let res = reqwest::Client::new()
        .post(&hook)
        .json(&json!({
            "username": "CI Bot", "text": "coverage report",
            "image": {
                "data_base64": Base64::<Standard, &[u8]>::new(&png).encode(),
                "content_type": "image/png", "filename": "coverage.png",
            },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let posted = res.json::<Value>().await.unwrap()["event_id"].as_str().unwrap().to_owned();
    let raw = raw_event(&synapse, &alice_token, &room, &posted).await;
    assert_eq!(raw["type"], "m.room.encrypted", "the bridge sent the image in plaintext: {raw}");
    let got = alice.next_message(&room, CI_GHOST).await;
    assert_eq!(got["event_id"], posted.as_str(), "{got}");
    assert_eq!(got["msgtype"], "m.image", "{got}");
    assert_eq!(got["body"], "coverage report", "the text is the caption: {got}");
    assert_eq!(got["decrypted"], true, "{got}");
    assert_eq!(got["encrypted_file"], true, "the upload is encrypted: {got}");
    assert_eq!(got["size"], png.len(), "{got}");
    assert_eq!(got["sha256"], sha256_hex(&png).as_str(), "the image decrypts to what was posted");
    let mxc = got["url"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned();
    let stored = crate::common::http()
        .get(format!("{}/_matrix/client/v1/media/download/{mxc}", synapse.url))
        .bearer_auth(&alice_token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(stored.len(), png.len(), "{} bytes stored", stored.len());
    assert_ne!(stored.as_ref(), png.as_slice(), "the media repository holds the plaintext");

    // The bridge restarts: it keeps its device and megolm sessions, so Alice gets no new room
    // key, and both directions still work.
    let keys = alice.room_keys().await;
    let from_bot = keys["by_sender"][BOT].as_u64().unwrap_or(0);
    assert!(from_bot >= 1, "the bridge shared its room key with Alice: {keys}");
    bridge.stop().await;
    let bridge = start().await;
    assert_eq!(wait_for_bridge_device(&synapse, &alice_token).await, bot_device);
    let posted = post_hook(&hook, "after restart").await;
    let got = alice.next_message(&room, CI_GHOST).await;
    assert_eq!(
        (got["event_id"].as_str(), got["body"].as_str()),
        (Some(posted.as_str()), Some("after restart")),
        "{got}"
    );
    assert_eq!(got["decrypted"], true, "{got}");
    alice.send_text(&room, "still there?").await;
    outgoing_message(&received, "still there?").await;
    let keys = alice.room_keys().await;
    assert_eq!(
        keys["by_sender"][BOT].as_u64().unwrap_or(0),
        from_bot,
        "no new room key after the restart: {keys}"
    );
    let stuck = alice.call(json!({"cmd": "undecryptable"})).await;
    assert_eq!(stuck["events"], json!([]), "{stuck}");

    alice.quit().await;
    bridge.stop().await;
}

#[tokio::test]
async fn the_webhook_bridge_reads_and_writes_an_encrypted_room_on_sqlite() {
    if !enabled() {
        return;
    }
    the_webhook_bridge_reads_and_writes_an_encrypted_room("sqlite").await;
}

#[tokio::test]
async fn the_webhook_bridge_reads_and_writes_an_encrypted_room_on_postgres() {
    if !enabled() || crate::common::postgres_url().is_none() {
        return;
    }
    the_webhook_bridge_reads_and_writes_an_encrypted_room("postgres").await;
}
