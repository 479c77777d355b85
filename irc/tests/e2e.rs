//! The IRC bridge end to end: a real Synapse, a real InspIRCd, the bridge as its own process,
//! an IRC user on a raw socket and Matrix users through the Client-Server API.
//!
//! Runs with `MXBRIDGE_TEST_SYNAPSE=1` (`scripts/test.sh` sets it); then a missing Synapse or
//! InspIRCd fails it.

mod common;

use std::time::Duration;

use common::{
    BridgeFiles, Human, Inspircd, IrcHuman, PROVISION_SECRET, Synapse, enabled, wait_for,
};
use serde_json::{Value, json};

fn body(e: &Value) -> &str {
    e["content"]["body"].as_str().unwrap_or_default()
}

/// The IRC lines in the room's messages (lines said together come as one message).
fn lines(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .flat_map(|e| body(e).split('\n'))
        .collect()
}

fn has_line(e: &Value, line: &str) -> bool {
    body(e).split('\n').any(|l| l == line)
}

fn from(e: &Value, sender: &str) -> bool {
    e["sender"] == sender
}

/// Logs in through the provisioning API (Bob's way); returns the login's ID.
async fn provision_login(port: u16, user: &str, nick: &str) -> String {
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/_matrix/provision/v3");
    let q = format!("user_id={}", common::urlencode(user));
    let step: Value = http
        .post(format!("{base}/login/start/nick?{q}"))
        .bearer_auth(PROVISION_SECRET)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(step["type"], "user_input", "{step}");
    let process = step["login_id"].as_str().unwrap();
    let step_id = step["step_id"].as_str().unwrap();
    let done: Value = http
        .post(format!("{base}/login/step/{process}/{step_id}/user_input?{q}"))
        .bearer_auth(PROVISION_SECRET)
        .json(&json!({"nick": nick}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["type"], "complete", "{done}");
    done["complete"]["user_login_id"].as_str().unwrap().to_owned()
}

/// The states of a user's logins, from the provisioning API.
async fn login_state(port: u16, user: &str) -> Option<String> {
    let http = reqwest::Client::new();
    let url = format!(
        "http://127.0.0.1:{port}/_matrix/provision/v3/logins?user_id={}",
        common::urlencode(user)
    );
    let res = http.get(url).bearer_auth(PROVISION_SECRET).send().await.ok()?;
    let v: Value = res.json().await.ok()?;
    v["logins"][0]["state"]["state_event"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_and_matrix_users_talk_through_crashes_and_server_restarts() {
    if !enabled() {
        return;
    }
    mxbridge::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let ircd = Inspircd::start(tmp.path());
    let files = BridgeFiles::write(tmp.path());
    let _logs = common::LogsOnPanic(tmp.path().to_owned());
    let synapse = Synapse::start(tmp.path(), &files.registration);
    files.write_config(&synapse.url, ircd.port);
    let mut bridge = files.spawn(1);
    files.wait_ready().await;

    // Dave is on IRC first: he founds #test and is its operator.
    let mut dave = IrcHuman::connect(ircd.port, "dave", "dave").await;
    dave.send("JOIN #test").await;
    dave.wait(10, |l| l.contains(" 366 dave #test")).await;
    dave.send("PRIVMSG #test :before anyone from Matrix").await;

    // Alice logs in through the bot; Bob through the provisioning API.
    let alice = Human::new(&synapse, "alice");
    let bob = Human::new(&synapse, "bob");
    let carol = Human::new(&synapse, "carol");
    let alice_dm = alice.dm_with_bot().await;
    alice.say(&alice_dm, "login nick").await;
    alice.wait_notice(&alice_dm, "Nick").await;
    alice.say(&alice_dm, "alice").await;
    alice.wait_notice(&alice_dm, "Logged in").await;
    let bob_login = provision_login(files.port, &bob.user_id, "bob").await;
    assert_eq!(bob_login, "@bob:localhost");
    let connected = wait_for(30, async || {
        (login_state(files.port, &bob.user_id).await.as_deref() == Some("CONNECTED")).then_some(())
    })
    .await;
    assert!(connected.is_some(), "bob's login never connected");

    // Both join the channel by command; its portal invites them.
    alice.say(&alice_dm, "join #test").await;
    let room = alice.join_invited("#test").await;
    let bob_dm = bob.dm_with_bot().await;
    bob.say(&bob_dm, "join #test").await;
    assert_eq!(bob.join_invited("#test").await, room);
    dave.wait(10, |l| l.starts_with(":alice!") && l.contains("JOIN")).await;
    dave.wait(10, |l| l.starts_with(":bob!") && l.contains("JOIN")).await;

    // History the server replayed on the first join came in, once, with its time.
    let early = alice
        .wait_event(&room, "the replayed line", |e| body(e) == "before anyone from Matrix")
        .await;
    let dave_ghost = early["sender"].as_str().unwrap().to_owned();
    assert_eq!(dave_ghost, "@_irc_dave:localhost");

    // IRC → Matrix: formatting, /me, a mention.
    dave.send("PRIVMSG #test :\x02bold\x02 and \x0304red\x03, alice: hi").await;
    let formatted = alice
        .wait_event(&room, "the formatted line", |e| body(e) == "bold and red, alice: hi")
        .await;
    let html = formatted["content"]["formatted_body"].as_str().unwrap();
    assert!(html.contains("<strong>bold</strong>"), "{html}");
    assert!(html.contains("data-mx-color=\"#ff0000\""), "{html}");
    assert!(html.contains("https://matrix.to/#/@alice:localhost"), "alice is not a pill: {html}");
    assert_eq!(formatted["content"]["m.mentions"]["user_ids"], json!(["@alice:localhost"]));
    dave.send("PRIVMSG #test :\x01ACTION waves\x01").await;
    let emote = alice.wait_event(&room, "dave's /me", |e| body(e) == "waves").await;
    assert_eq!(emote["content"]["msgtype"], "m.emote");

    // Lines said together (a paste) come as one message of several lines, in order.
    dave.send("PRIVMSG #test :paste 1\r\nPRIVMSG #test :paste 2\r\nPRIVMSG #test :paste 3").await;
    alice.wait_event(&room, "the pasted lines", |e| has_line(e, "paste 3")).await;
    let pasted: Vec<String> = lines(&alice.events(&room).await)
        .into_iter()
        .filter(|l| l.starts_with("paste "))
        .map(str::to_owned)
        .collect();
    assert_eq!(pasted, ["paste 1", "paste 2", "paste 3"]);

    // A flood of lines trickling in: the lines that come while the channel's last message is
    // on its way are held and go as one, so they come as a few messages; each line once, in
    // order, and a /me said in the middle keeps its place.
    for i in 0..80 {
        dave.send(&format!("PRIVMSG #test :flood {i:02}")).await;
        if i == 40 {
            dave.send("PRIVMSG #test :\x01ACTION interrupts\x01").await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    alice.wait_event(&room, "the flood's last line", |e| has_line(e, "flood 79")).await;
    let events = alice.events(&room).await;
    let flood: Vec<&Value> = events
        .iter()
        .filter(|e| body(e).starts_with("flood ") || body(e) == "interrupts")
        .collect();
    let said: Vec<&str> = flood.iter().flat_map(|e| body(e).split('\n')).collect();
    let mut expected: Vec<String> = (0..80).map(|i| format!("flood {i:02}")).collect();
    expected.insert(41, "interrupts".into());
    assert_eq!(said, expected);
    assert!(flood.len() <= 40, "{} messages for 81 lines", flood.len());

    // A colourful paste whose HTML would be larger than one Matrix event takes: it comes as
    // several messages, every line once and in order.
    let colours: String = (0..30).map(|i| format!("\x03{:02}c", i % 16)).collect();
    let paste: Vec<String> =
        (0..60).map(|i| format!("PRIVMSG #test :art {i:02} {colours}")).collect();
    dave.send(&paste.join("\r\n")).await;
    alice
        .wait_event(&room, "the paste's last line", |e| {
            has_line(e, &format!("art 59 {}", "c".repeat(30)))
        })
        .await;
    let events = alice.events(&room).await;
    let art: Vec<&Value> = events.iter().filter(|e| body(e).starts_with("art ")).collect();
    let said: Vec<&str> = art.iter().flat_map(|e| body(e).split('\n')).collect();
    let expected: Vec<String> = (0..60).map(|i| format!("art {i:02} {}", "c".repeat(30))).collect();
    assert_eq!(said, expected);
    assert!(art.len() > 1, "60 colourful lines in one message");
    for e in &art {
        let html = e["content"]["formatted_body"].as_str().unwrap_or_default();
        assert!(html.len() < 32 * 1024, "a message of {} bytes of HTML", html.len());
    }

    // Matrix → IRC: formatting, /me, a pill, a notice.
    alice
        .send(
            &room,
            json!({"msgtype": "m.text", "body": "hello dave",
                   "format": "org.matrix.custom.html",
                   "formatted_body": "<b>hello</b> <a href=\"https://matrix.to/#/@_irc_dave:localhost\">dave</a>"}),
        )
        .await;
    dave.wait(10, |l| l.starts_with(":alice!") && l.ends_with("PRIVMSG #test :\x02hello\x02 dave"))
        .await;
    alice.send(&room, json!({"msgtype": "m.emote", "body": "dances"})).await;
    dave.wait(10, |l| {
        l.starts_with(":alice!") && l.ends_with("PRIVMSG #test :\x01ACTION dances\x01")
    })
    .await;
    bob.send(&room, json!({"msgtype": "m.notice", "body": "a notice"})).await;
    dave.wait(10, |l| l.starts_with(":bob!") && l.ends_with("NOTICE #test :a notice")).await;
    // Our own lines never come back as ghosts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = alice.events(&room).await;
    assert!(
        !events.iter().any(|e| e["sender"]
            .as_str()
            .is_some_and(|s| s.starts_with("@_irc_alice") || s.starts_with("@_irc_bob"))),
        "a Matrix user's own line came back as a ghost"
    );

    // A long message is cut at the line limit, in order, words whole.
    let long: String = (0..150).map(|i| format!("word{i:03}")).collect::<Vec<_>>().join(" ");
    alice.say(&room, &long).await;
    let parts = wait_for(20, async || {
        let parts = dave.texts_from("alice", "#test");
        let parts: Vec<String> = parts.into_iter().filter(|p| p.starts_with("word")).collect();
        (parts.join(" ").len() >= long.len()).then_some(parts)
    })
    .await
    .expect("the long message never arrived whole");
    assert!(parts.len() >= 3, "{parts:?}");
    assert_eq!(parts.join(" "), long);
    assert!(parts.iter().all(|p| p.len() < 512));

    // A private message both ways: a DM portal for Alice's login.
    dave.send("PRIVMSG alice :psst, alice").await;
    let dm = alice.join_invited("dave").await;
    alice
        .wait_event(&dm, "dave's private message", |e| {
            body(e) == "psst, alice" && from(e, &dave_ghost)
        })
        .await;
    alice.say(&dm, "psst back").await;
    dave.wait(10, |l| l.starts_with(":alice!") && l.ends_with("PRIVMSG dave :psst back")).await;

    // Topic both ways.
    dave.send("TOPIC #test :a topic from IRC").await;
    let topic = wait_for(20, async || {
        let t = alice.state(&room, "m.room.topic", "").await?;
        (t["topic"] == "a topic from IRC").then_some(())
    })
    .await;
    assert!(topic.is_some(), "the IRC topic never reached the room");
    // Channel operators moderate the room: Dave makes Alice one, and she may set the topic.
    dave.send("MODE #test +o alice").await;
    let op = wait_for(20, async || {
        let levels = alice.state(&room, "m.room.power_levels", "").await?;
        (levels["users"]["@alice:localhost"] == 50 && levels["users"][dave_ghost.as_str()] == 50)
            .then_some(())
    })
    .await;
    assert!(op.is_some(), "operators did not become moderators");
    alice
        .call(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", common::urlencode(&room)),
            Some(json!({"topic": "a topic from Matrix"})),
        )
        .await;
    dave.wait(10, |l| l.starts_with(":alice!") && l.ends_with("TOPIC #test :a topic from Matrix"))
        .await;

    // Relay: Carol has no login; Alice makes her login the room's relay.
    alice.say(&room, "!irc set-relay").await;
    alice.wait_notice(&room, "relay").await;
    alice
        .call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", common::urlencode(&room)),
            Some(json!({"user_id": carol.user_id})),
        )
        .await;
    carol
        .call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/join", common::urlencode(&room)),
            Some(json!({})),
        )
        .await;
    carol.say(&room, "relayed hello").await;
    dave.wait(10, |l| {
        l.starts_with(":alice!") && l.ends_with("PRIVMSG #test :<carol> relayed hello")
    })
    .await;

    // A nick change keeps the ghost; the nick reused by someone else is another ghost.
    dave.send("NICK dave2").await;
    dave.nick = "dave2".into();
    let renamed = wait_for(20, async || {
        let m = alice.state(&room, "m.room.member", &dave_ghost).await?;
        (m["displayname"] == "dave2").then_some(())
    })
    .await;
    assert!(renamed.is_some(), "the ghost was not renamed");
    dave.send("PRIVMSG #test :still me").await;
    let still = alice
        .wait_event(&room, "dave2's line", |e| body(e) == "still me" && from(e, &dave_ghost))
        .await;
    // A reply names whom it answers.
    let reply_to = still["event_id"].as_str().unwrap();
    alice
        .send(
            &room,
            json!({"msgtype": "m.text", "body": "indeed",
                   "m.relates_to": {"m.in_reply_to": {"event_id": reply_to}}}),
        )
        .await;
    dave.wait(10, |l| l.starts_with(":alice!") && l.ends_with("PRIVMSG #test :dave2: indeed"))
        .await;
    let mut eve = IrcHuman::connect(ircd.port, "dave", "eve").await;
    eve.send("JOIN #test").await;
    eve.send("PRIVMSG #test :i am the new dave").await;
    let newcomer =
        alice.wait_event(&room, "the new dave's line", |e| body(e) == "i am the new dave").await;
    assert_ne!(newcomer["sender"], dave_ghost.as_str(), "the reused nick inherited the old ghost");

    // A kick of Bob's nick takes Bob out of the room.
    dave.send("KICK #test bob :behave").await;
    let kicked = wait_for(20, async || {
        let m = alice.state(&room, "m.room.member", &bob.user_id).await?;
        (m["membership"] == "leave").then_some(m)
    })
    .await
    .expect("bob was not kicked from the room");
    assert!(kicked["reason"].as_str().unwrap_or_default().contains("behave"), "{kicked}");

    // SIGKILL mid-conversation: lines said while the bridge is down come back through the
    // server's history replay, each exactly once; Matrix lines queued meanwhile reach IRC.
    for i in 0..5 {
        dave.send(&format!("PRIVMSG #test :before kill {i}")).await;
    }
    alice.say(&room, "alice before kill").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bridge.kill(); // SIGKILL
    dave.wait(10, |l| l.starts_with(":alice!") && l.contains("QUIT")).await;
    for i in 0..5 {
        dave.send(&format!("PRIVMSG #test :while down {i}")).await;
    }
    alice.say(&room, "alice while down").await;
    let mut bridge = files.spawn(2);
    files.wait_ready().await;
    for text in
        (0..5).map(|i| format!("while down {i}")).chain((0..5).map(|i| format!("before kill {i}")))
    {
        alice.wait_event(&room, &text, |e| has_line(e, &text)).await;
    }
    dave.wait(30, |l| l.starts_with(":alice!") && l.ends_with(":alice while down")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = alice.events(&room).await;
    for text in
        (0..5).map(|i| format!("while down {i}")).chain((0..5).map(|i| format!("before kill {i}")))
    {
        let n = lines(&events).iter().filter(|l| **l == text).count();
        assert_eq!(n, 1, "{text:?} reached Matrix {n} times");
    }
    let before: Vec<String> = dave.texts_from("alice", "#test");
    let repeats = before.iter().filter(|t| *t == "alice before kill").count();
    assert!((1..=2).contains(&repeats), "\"alice before kill\" reached IRC {repeats} times");
    // Lines keep their order: the replayed ones by their server time.
    let order: Vec<&str> = lines(&events)
        .into_iter()
        .filter(|b| b.starts_with("while down") || b.starts_with("before kill"))
        .collect();
    let mut sorted = order.clone();
    sorted.sort_by_key(|b| (b.starts_with("while"), b.to_string()));
    assert_eq!(order, sorted, "lines out of order");

    // InspIRCd restarts: the logins reconnect (a transient disconnect, then connected).
    ircd.restart();
    let transient = wait_for(20, async || {
        (login_state(files.port, &alice.user_id).await.as_deref() != Some("CONNECTED"))
            .then_some(())
    })
    .await;
    assert!(transient.is_some(), "the restart was not noticed");
    let back = wait_for(60, async || {
        (login_state(files.port, &alice.user_id).await.as_deref() == Some("CONNECTED"))
            .then_some(())
    })
    .await;
    assert!(back.is_some(), "alice's login never reconnected:\n{}", files.log(2));
    let log = files.log(2);
    assert!(log.contains("TRANSIENT_DISCONNECT"), "no transient disconnect was reported");
    let mut frank = IrcHuman::connect(ircd.port, "frank", "frank").await;
    frank.send("JOIN #test").await;
    frank.wait(10, |l| l.contains(" 366 frank #test")).await;
    // Alice's login is back in the channel (before Frank or after him).
    frank
        .wait(30, |l| {
            (l.contains(" 353 frank ") && l.contains("alice"))
                || (l.starts_with(":alice!") && l.contains("JOIN"))
        })
        .await;
    frank.send("PRIVMSG #test :after the restart").await;
    alice.wait_event(&room, "a line after the restart", |e| body(e) == "after the restart").await;
    alice.say(&room, "alice after the restart").await;
    frank.wait(20, |l| l.starts_with(":alice!") && l.ends_with(":alice after the restart")).await;

    bridge.kill();
    drop(eve);
}

/// A channel's portal made by its alias: joining `#_irc_#lazy…:localhost` makes the room, the
/// joining user's login joins the channel, and lines go both ways; channels outside the
/// configured patterns have no such alias. The bridge reaches the server over TLS here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_channel_alias_makes_its_portal() {
    if !enabled() {
        return;
    }
    mxbridge::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let ircd = Inspircd::start(tmp.path());
    let files = BridgeFiles::write(tmp.path());
    let _logs = common::LogsOnPanic(tmp.path().to_owned());
    let synapse = Synapse::start(tmp.path(), &files.registration);
    files.write_config_tls(&synapse.url, ircd.tls_port, &ircd.cert());
    let mut bridge = files.spawn(1);
    files.wait_ready().await;

    let mut dave = IrcHuman::connect(ircd.port, "dave", "dave").await;
    dave.send("JOIN #lazy").await;
    dave.wait(10, |l| l.contains(" 366 dave #lazy")).await;

    let alice = Human::new(&synapse, "alice");
    let alice_dm = alice.dm_with_bot().await;
    alice.say(&alice_dm, "login nick").await;
    alice.wait_notice(&alice_dm, "Nick").await;
    alice.say(&alice_dm, "alice").await;
    alice.wait_notice(&alice_dm, "Logged in").await;

    // Not a configured channel, or not a channel: no room.
    let (status, text) = alice.try_join("#_irc_#other:localhost").await.unwrap_err();
    assert_eq!(status, 404, "{text}");
    let (status, text) = alice.try_join("#_irc_lazy:localhost").await.unwrap_err();
    assert_eq!(status, 404, "{text}");

    // The alias makes the portal; Alice's login joins the channel (over TLS: InspIRCd tells
    // the channel's operator nothing of it, but WHOIS does).
    let room = alice.try_join("#_irc_#lazy:localhost").await.unwrap();
    dave.wait(20, |l| l.starts_with(":alice!") && l.contains("JOIN")).await;
    dave.send("WHOIS alice").await;
    dave.wait(10, |l| l.contains(" 671 dave alice ")).await;
    let name = alice.state(&room, "m.room.name", "").await.unwrap();
    assert_eq!(name["name"], "#lazy");
    let rules = alice.state(&room, "m.room.join_rules", "").await.unwrap();
    assert_eq!(rules["join_rule"], "public");
    dave.send("PRIVMSG #lazy :hello from irc").await;
    let line = alice.wait_event(&room, "dave's line", |e| body(e) == "hello from irc").await;
    assert_eq!(line["sender"], "@_irc_dave:localhost");
    alice.say(&room, "hello from matrix").await;
    dave.wait(20, |l| l.starts_with(":alice!") && l.ends_with("PRIVMSG #lazy :hello from matrix"))
        .await;

    // The same alias again is the same room; another user without a login is told how to
    // get one.
    let carol = Human::new(&synapse, "carol");
    assert_eq!(carol.try_join("#_irc_#lazy:localhost").await.unwrap(), room);
    alice.wait_notice(&room, "@carol:localhost: you are not logged in").await;

    bridge.kill();
}
