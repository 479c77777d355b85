//! The bridge: logins as IRC connections, channels and private messages as portals, nicks as
//! ghosts.
//!
//! Every login has its own connection. A channel's lines reach Matrix through one of the
//! logins in it (its *reader*: the connected login with the smallest ID), so a channel with
//! three Matrix users is bridged once; lines of the bridge's own nicks are never bridged back
//! as ghosts (the echo of a login's own message confirms its Matrix event instead). Private
//! messages reach the portal of the login they were sent to.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use mxbridge::{
    Bridge, BridgeError, BridgeResult, ChatInfoChange, ChatMember, CommandCall, CommandSpec,
    Context, Delivery, MatrixChatInfo, MatrixEdit, MatrixMembership, MatrixMessage,
    MembershipChange, PortalInfo, PortalKey, Queued, RemoteEvent, RemoteLoginId, RemoteMembership,
    RemoteMessageId, RemotePart, RemotePartId, RemoteSender, RemoteTxnId, RemoteUserId,
    format::{Mention, MentionLookup, ParsedMessage},
    login::{AnyLoginProcess, LoginFlow, LoginState, UserLogin},
};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedUserId, RoomAliasId, UInt, UserId,
    events::room::{
        join_rules::{JoinRule, RoomJoinRulesEventContent},
        message::{MessageType, RoomMessageEventContent},
    },
};
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinSet};

use crate::{
    conn::{ConnConfig, ConnError, Connection, Sender, Throttle},
    format::{IrcRender, find_nicks, to_matrix},
    ghosts::Ghosts,
    login::{IrcLogin, LoginMeta},
    proto::{Message, casefold, ctcp, is_channel, split_line},
};

/// The `bridge:` section of the config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct IrcConfig {
    /// The server, `host:port`.
    pub(crate) server: String,
    /// Whether the server is reached over TLS (its certificate checked against `host`).
    pub(crate) tls: bool,
    /// A PEM file of the certificates to trust for TLS instead of the system's (a private
    /// server's CA or self-signed certificate).
    pub(crate) tls_ca_file: Option<String>,
    /// The user name (ident) of the bridge's connections.
    pub(crate) username: String,
    /// Lines a connection may send at once.
    pub(crate) throttle_burst: u32,
    /// Then one line per this many milliseconds.
    pub(crate) throttle_interval_ms: u64,
    /// The longest Matrix message sent to IRC, in lines; the rest is cut with a note.
    pub(crate) max_lines: usize,
    /// The base URL of media links (default: the homeserver's address).
    pub(crate) media_url: Option<String>,
    /// Lines of one sender that arrive together (a paste), or while the channel's previous
    /// message is on its way to Matrix, become one Matrix message of several lines, at most
    /// 200 lines (16 KiB of text). A line is held back for at most half a second this way,
    /// and not at all when nothing of its channel is on its way.
    pub(crate) merge_bursts: bool,
    /// Channels whose portals are made on demand by alias (glob patterns, `*` and `?`, matched
    /// without case): joining `#<ghost prefix><channel>:<domain>` makes the channel's room,
    /// open to anyone on the homeserver. Empty (the default): no portal is made by alias.
    pub(crate) alias_channels: Vec<String>,
}

impl Default for IrcConfig {
    fn default() -> Self {
        Self {
            server: "127.0.0.1:6667".into(),
            tls: false,
            tls_ca_file: None,
            username: "matrix".into(),
            throttle_burst: 5,
            throttle_interval_ms: 500,
            max_lines: 10,
            media_url: None,
            merge_bursts: true,
            alias_channels: Vec::new(),
        }
    }
}

/// The bridge.
#[derive(Debug)]
pub(crate) struct Irc {
    shared: Arc<Shared>,
}

/// What the bridge and its connection tasks share.
#[derive(Debug)]
struct Shared {
    ctx: Context,
    config: IrcConfig,
    /// The TLS setup, when `tls` is on.
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    ghosts: Ghosts,
    logins: Mutex<BTreeMap<RemoteLoginId, Arc<Live>>>,
    /// Per channel (case-folded): the logins whose connections are in it.
    readers: Mutex<BTreeMap<String, BTreeSet<RemoteLoginId>>>,
    /// The nicks of the bridge's own connections (case-folded), and whose they are.
    own_nicks: Mutex<BTreeMap<String, RemoteLoginId>>,
}

/// How the first connection attempt of a login ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Connected,
    Refused(String),
    Transient(String),
}

/// A login's running connection.
#[derive(Debug)]
struct Live {
    id: RemoteLoginId,
    user_id: OwnedUserId,
    meta: LoginMeta,
    state: Mutex<LiveState>,
    outcome: watch::Sender<Option<Outcome>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

#[derive(Debug, Default)]
struct LiveState {
    sender: Option<Sender>,
    nick: String,
    echo: bool,
    labels: bool,
    userhost_len: usize,
    channels: BTreeMap<String, Channel>,
    /// Echoes awaited without labels: the target (case-folded) and the transaction of the
    /// first line of a message.
    pending: VecDeque<(String, Option<RemoteTxnId>)>,
    /// Echoes awaited by label.
    labelled: BTreeMap<String, Option<RemoteTxnId>>,
    next_label: u64,
}

#[derive(Debug, Default)]
struct Channel {
    /// Members by case-folded nick: their nick and prefix modes (`o`, `v`, ...).
    members: BTreeMap<String, (String, String)>,
}

impl LiveState {
    fn text_limit(&self, target: &str) -> usize {
        let userhost = if self.userhost_len == 0 { 74 } else { self.userhost_len };
        let overhead = 1 + self.nick.len() + 1 + userhost + " PRIVMSG ".len() + target.len() + 4;
        crate::proto::LINE_LIMIT.saturating_sub(overhead).max(64)
    }
}

/// The most lines one burst becomes.
const MAX_BURST: usize = 200;

/// The most IRC text (bytes) one burst takes.
const MAX_BURST_TEXT: usize = 16 * 1024;

/// The most text (plain body and HTML, bytes) of one Matrix message a burst becomes: a burst
/// whose rendered lines are more (colours and pills make HTML several times the IRC text) is
/// sent as several messages, well within a Matrix event's 64 KiB.
const MESSAGE_TEXT_MAX: usize = 24 * 1024;

/// Whether `more` lines may join `burst` within [`MAX_BURST`] and [`MAX_BURST_TEXT`].
fn fits(burst: &[Message], more: &[Message]) -> bool {
    let text = |lines: &[Message]| lines.iter().map(|m| m.param(1).len()).sum::<usize>();
    burst.len() + more.len() <= MAX_BURST && text(burst) + text(more) <= MAX_BURST_TEXT
}

/// The longest a channel line is held back while the channel's previous message is on its way.
const HOLD_AT_MOST: Duration = Duration::from_millis(500);

/// A connection's channel lines on their way to Matrix. A line whose channel has nothing on its
/// way goes at once; lines that arrive while something does are held, and go together as one
/// message when it has arrived (or after [`HOLD_AT_MOST`]). So a single line waits for nothing,
/// and a paste becomes a few messages instead of one per line.
#[derive(Default)]
struct Bursts {
    /// Channels (case-folded) whose last message has not reached Matrix yet, with its place in
    /// the queue.
    busy: BTreeMap<String, i64>,
    /// The lines held for a busy channel: one sender's, in order.
    held: BTreeMap<String, Vec<Message>>,
    /// Each ends with a channel and a message's place in the queue when the message reached
    /// Matrix.
    arrived: JoinSet<(String, i64)>,
}

/// Where the `msgid`s of lines bridged inside a burst are kept (`chat msgid` → the burst's ID).
const MSGID_ALIASES: &str = "irc_msgid";

/// Whether `next` continues the burst `first` started: the same command, sender and channel,
/// live, no CTCP.
fn same_burst(first: &Message, next: &Message) -> bool {
    next.command == first.command
        && next.source == first.source
        && next.param(0) == first.param(0)
        && next.tag("batch").is_none()
        && ctcp(next.param(1)).is_none()
}

/// Whether `name` matches the glob `pattern` (`*` any run, `?` one character), both
/// case-folded by the caller.
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    // The last `*` seen and the name position it stands at, to widen it on a mismatch.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether `name` can be sent as one channel name.
fn valid_channel(name: &str) -> bool {
    is_channel(name) && name.len() > 1 && !name.contains([',', ' ', '\x07', '\r', '\n'])
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The power level of IRC channel modes: operators (and above) moderate.
fn level_of(modes: &str) -> i64 {
    if modes.contains(['q', 'a', 'o']) {
        50
    } else if modes.contains('h') {
        25
    } else {
        0
    }
}

fn prefix_mode(c: char) -> Option<char> {
    Some(match c {
        '~' => 'q',
        '&' => 'a',
        '@' => 'o',
        '%' => 'h',
        '+' => 'v',
        _ => return None,
    })
}

/// An IRCv3 `time` tag (`2024-01-02T03:04:05.678Z`) as a Matrix timestamp.
fn parse_time(s: &str) -> Option<MilliSecondsSinceUnixEpoch> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = if b.get(19) == Some(&b'.') { num(20..23).unwrap_or(0) } else { 0 };
    // Days from the civil date (proleptic Gregorian).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = ((days * 24 + h) * 60 + mi) * 60 + sec;
    let millis = u64::try_from(total * 1000 + ms).ok()?;
    Some(MilliSecondsSinceUnixEpoch(UInt::new(millis)?))
}

impl Shared {
    fn live(&self, id: &RemoteLoginId) -> Option<Arc<Live>> {
        self.logins.lock().expect("lock").get(id).cloned()
    }

    fn own_nick(&self, nick: &str) -> Option<RemoteLoginId> {
        self.own_nicks.lock().expect("lock").get(&casefold(nick)).cloned()
    }

    fn is_reader(&self, channel: &str, login: &RemoteLoginId) -> bool {
        let readers = self.readers.lock().expect("lock");
        readers.get(channel).and_then(|r| r.first()) == Some(login)
    }

    async fn queue(&self, key: &PortalKey, event: &RemoteEvent) {
        drop(self.queue_tracked(key, event).await);
    }

    async fn queue_tracked(&self, key: &PortalKey, event: &RemoteEvent) -> Option<Queued> {
        self.ctx
            .queue_remote(key, event)
            .await
            .inspect_err(|e| {
                tracing::warn!(portal = %key, kind = event.kind(), error = %e, "could not queue an IRC event");
            })
            .ok()
    }

    fn set_nick(&self, live: &Live, nick: &str) {
        let mut own = self.own_nicks.lock().expect("lock");
        own.retain(|_, id| *id != live.id);
        own.insert(casefold(nick), live.id.clone());
        live.state.lock().expect("lock").nick = nick.to_owned();
    }

    /// The connection's state is gone: out of its channels, its nick free.
    fn dropped(&self, live: &Live) {
        let mut state = live.state.lock().expect("lock");
        state.sender = None;
        let channels = std::mem::take(&mut state.channels);
        state.pending.clear();
        state.labelled.clear();
        drop(state);
        let mut readers = self.readers.lock().expect("lock");
        for channel in channels.keys() {
            if let Some(set) = readers.get_mut(channel) {
                set.remove(&live.id);
            }
        }
        self.own_nicks.lock().expect("lock").retain(|_, id| *id != live.id);
    }

    fn conn_config(&self, live: &Live) -> ConnConfig {
        let meta = &live.meta;
        ConnConfig {
            address: self.config.server.clone(),
            nick: meta.nick.clone(),
            username: self.config.username.clone(),
            realname: live.user_id.to_string(),
            password: meta.password.clone(),
            sasl: meta.sasl_account.clone().zip(meta.sasl_password.clone()),
            throttle: Throttle {
                burst: self.config.throttle_burst,
                interval: Duration::from_millis(self.config.throttle_interval_ms),
            },
            tls: self.tls.clone(),
        }
    }

    /// A login's connection, kept up until logout: reconnected with growing pauses, its state
    /// reported.
    async fn run(self: Arc<Self>, live: Arc<Live>) {
        let mut backoff = Duration::from_secs(1);
        let config = self.conn_config(&live);
        loop {
            match Connection::connect(&config).await {
                Ok(mut conn) => {
                    backoff = Duration::from_secs(1);
                    {
                        let mut state = live.state.lock().expect("lock");
                        state.sender = Some(conn.sender.clone());
                        state.echo = conn.caps.contains("echo-message");
                        state.labels = conn.caps.contains("labeled-response");
                        state.userhost_len = conn.userhost_len;
                    }
                    self.set_nick(&live, &conn.nick);
                    self.ctx.set_login_state(&live.id, LoginState::Connected, None).await;
                    live.outcome.send_replace(Some(Outcome::Connected));
                    tracing::info!(login = %live.id, nick = conn.nick, caps = ?conn.caps, "IRC connected");
                    match self.ctx.store().portals_of_login(&live.id).await {
                        Ok(portals) => {
                            for key in portals.iter().filter(|k| k.receiver.is_none()) {
                                conn.sender.send(&Message::new("JOIN", &[key.chat.as_str()]));
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "could not read a login's channels"),
                    }
                    let mut bursts = Bursts::default();
                    let error = loop {
                        tokio::select! {
                            Some(done) = bursts.arrived.join_next(), if !bursts.arrived.is_empty() => {
                                match done {
                                    Ok((channel, seq)) => {
                                        self.arrived(&live, &mut bursts, channel, seq).await;
                                    }
                                    // A waiting task cannot fail; should one, no channel
                                    // waits for it.
                                    Err(_) => {
                                        bursts.busy.clear();
                                        self.flush(&live, &mut bursts).await;
                                    }
                                }
                            }
                            next = conn.next() => match next {
                                Ok(m) if self.config.merge_bursts && self.mergeable(&live, &m) => {
                                    let burst = Self::read_burst(&mut conn, m);
                                    self.hold_or_send(&live, &mut bursts, burst).await;
                                }
                                Ok(m) => {
                                    // Anything else comes after the lines held before it.
                                    self.flush(&live, &mut bursts).await;
                                    self.on_message(&live, m).await;
                                }
                                Err(e) => {
                                    self.flush(&live, &mut bursts).await;
                                    break e;
                                }
                            }
                        }
                    };
                    self.dropped(&live);
                    let why = error.to_string();
                    tracing::info!(login = %live.id, %why, "IRC disconnected");
                    self.ctx
                        .set_login_state(&live.id, LoginState::TransientDisconnect, Some(&why))
                        .await;
                }
                Err(ConnError::Refused(why)) => {
                    live.outcome.send_replace(Some(Outcome::Refused(why.clone())));
                    self.ctx
                        .set_login_state(&live.id, LoginState::BadCredentials, Some(&why))
                        .await;
                    return;
                }
                Err(ConnError::Transient(why)) => {
                    live.outcome.send_replace(Some(Outcome::Transient(why.clone())));
                    self.ctx
                        .set_login_state(&live.id, LoginState::TransientDisconnect, Some(&why))
                        .await;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }

    /// Whether a line may start a burst: a plain channel line of a ghost, live (not replayed
    /// history), in a channel this login reads.
    fn mergeable(&self, live: &Live, m: &Message) -> bool {
        matches!(m.command.as_str(), "PRIVMSG" | "NOTICE")
            && is_channel(m.param(0))
            && m.tag("batch").is_none()
            && ctcp(m.param(1)).is_none()
            && m.source.as_deref().is_some_and(|s| s.contains('!'))
            && self.own_nick(m.nick()).is_none()
            && self.is_reader(&casefold(m.param(0)), &live.id)
    }

    /// `first` and the lines read with it that continue it.
    fn read_burst(conn: &mut Connection, first: Message) -> Vec<Message> {
        let mut burst = vec![first];
        loop {
            match conn.next_buffered() {
                Some(next)
                    if same_burst(&burst[0], &next)
                        && fits(&burst, std::slice::from_ref(&next)) =>
                {
                    burst.push(next);
                }
                Some(next) => {
                    conn.push_back(next);
                    break;
                }
                None => break,
            }
        }
        burst
    }

    /// Sends a channel's lines at once when nothing of the channel is on its way, else holds
    /// them: with the lines held already when they continue those, else in their place (the
    /// lines held before go now, behind the channel's message on its way).
    async fn hold_or_send(&self, live: &Live, bursts: &mut Bursts, burst: Vec<Message>) {
        let channel = casefold(burst[0].param(0));
        if !bursts.busy.contains_key(&channel) {
            return self.send_burst(live, bursts, channel, burst).await;
        }
        match bursts.held.remove(&channel) {
            Some(mut held) if same_burst(&held[0], &burst[0]) && fits(&held, &burst) => {
                held.extend(burst);
                bursts.held.insert(channel, held);
            }
            Some(held) => {
                self.send_burst(live, bursts, channel.clone(), held).await;
                bursts.held.insert(channel, burst);
            }
            None => {
                bursts.held.insert(channel, burst);
            }
        }
    }

    /// A channel's message reached Matrix: when it is the channel's last, what was held for the
    /// channel goes now.
    async fn arrived(&self, live: &Live, bursts: &mut Bursts, channel: String, seq: i64) {
        tracing::trace!(%channel, seq, "in Matrix");
        if bursts.busy.get(&channel) != Some(&seq) {
            return; // A later message is on its way.
        }
        bursts.busy.remove(&channel);
        if let Some(held) = bursts.held.remove(&channel) {
            self.send_burst(live, bursts, channel, held).await;
        }
    }

    /// Sends every line held, before something else of the connection is bridged.
    async fn flush(&self, live: &Live, bursts: &mut Bursts) {
        let held = std::mem::take(&mut bursts.held);
        for (channel, lines) in held {
            self.send_burst(live, bursts, channel, lines).await;
        }
    }

    /// Queues a channel's lines (see [`Shared::on_burst`]), the channel busy until they reached
    /// Matrix.
    async fn send_burst(
        &self,
        live: &Live,
        bursts: &mut Bursts,
        channel: String,
        burst: Vec<Message>,
    ) {
        let lines = burst.len();
        let Some(queued) = self.on_burst(live, burst).await else { return };
        let seq = queued.seq();
        tracing::debug!(%channel, lines, seq, "lines queued for Matrix");
        bursts.busy.insert(channel.clone(), seq);
        bursts.arrived.spawn(async move {
            if tokio::time::timeout(HOLD_AT_MOST, queued.bridged()).await.is_err() {
                tracing::debug!(%channel, seq, "not in Matrix yet: held lines go");
            }
            (channel, seq)
        });
    }

    /// Consecutive lines of one sender to one channel: one Matrix message of several lines (or
    /// several messages, when their HTML would not fit one), each with its first line's
    /// `msgid` as its ID; the other lines' `msgid`s are kept as aliases so that a replay of the
    /// history skips them. Returns the last message's place in the queue.
    async fn on_burst(&self, live: &Live, burst: Vec<Message>) -> Option<Queued> {
        let first = &burst[0];
        let key = PortalKey::shared(casefold(first.param(0)));
        let sender =
            match self.ghosts.sender(self.ctx.store(), first.nick(), first.userhost()).await {
                Ok(sender) => sender,
                Err(e) => {
                    tracing::warn!(error = %e, "could not name a ghost");
                    return None;
                }
            };
        let nicks = self.channel_nicks(live, key.chat.as_str());
        let mention = |t: &str| find_nicks(t, &|w| nicks.contains(&casefold(w)));
        let mut lookup = Lookup { shared: self };
        // Each line rendered, then as many lines to a message as fit its size.
        let texts: Vec<_> =
            burst.iter().map(|m| to_matrix(m.param(1), &mention, &mut lookup)).collect();
        let mut messages: Vec<(PortalKey, RemoteEvent)> = Vec::new();
        let mut aliases: Vec<(String, RemoteMessageId)> = Vec::new();
        let mut start = 0;
        while start < burst.len() {
            let (mut body, mut html, mut formatted) = (Vec::new(), Vec::new(), false);
            let (mut size, mut end) = (0, start);
            let mut mentions = BTreeSet::new();
            while end < burst.len() {
                let text = &texts[end];
                let line_html = text.html.clone().unwrap_or_else(|| escape_html(&text.body));
                size += text.body.len() + line_html.len() + 8;
                if end > start && size > MESSAGE_TEXT_MAX {
                    break;
                }
                formatted |= text.html.is_some();
                html.push(line_html);
                body.push(text.body.clone());
                mentions.extend(text.mentions.iter().cloned());
                end += 1;
            }
            let text = mxbridge::format::MatrixText {
                body: body.join("\n"),
                html: formatted.then(|| html.join("<br>")),
                mentions,
                mentions_room: false,
            };
            let content =
                if first.command == "NOTICE" { text.into_notice() } else { text.into_content() };
            let head = &burst[start];
            let id = head.tag("msgid").map_or_else(RemoteMessageId::random, RemoteMessageId::from);
            for m in &burst[start + 1..end] {
                if let Some(msgid) = m.tag("msgid") {
                    aliases.push((format!("{} {msgid}", key.chat), id.clone()));
                }
            }
            let event = RemoteEvent::Message {
                id,
                sender: sender.clone(),
                timestamp: head.tag("time").and_then(parse_time),
                parts: vec![RemotePart { id: RemotePartId::default(), content }],
                reply_to: None,
                thread_root: None,
                echo_of: None,
            };
            messages.push((key.clone(), event));
            start = end;
        }
        let queued = match self.ctx.queue_remote_batch(&messages).await {
            Ok(mut queued) => queued.pop(),
            Err(e) => {
                tracing::warn!(portal = %key, error = %e, "could not queue IRC lines");
                None
            }
        };
        let entries: Vec<(&str, &str)> =
            aliases.iter().map(|(alias, id)| (alias.as_str(), id.as_str())).collect();
        if let Err(e) = self.ctx.store().kv_put_many(MSGID_ALIASES, &entries).await {
            tracing::warn!(error = %e, "could not keep the msgids of a burst's lines");
        }
        queued
    }

    /// The nicks in a channel as this login sees them, case-folded.
    fn channel_nicks(&self, live: &Live, channel: &str) -> BTreeSet<String> {
        let state = live.state.lock().expect("lock");
        state.channels.get(channel).map(|c| c.members.keys().cloned().collect()).unwrap_or_default()
    }

    /// One line from a login's connection.
    async fn on_message(&self, live: &Live, m: Message) {
        let (our_nick, own) = {
            let state = live.state.lock().expect("lock");
            (state.nick.clone(), casefold(m.nick()) == casefold(&state.nick))
        };
        match m.command.as_str() {
            "PRIVMSG" | "NOTICE" => self.on_text(live, &m, own).await,
            "JOIN" => self.on_join(live, &m, own).await,
            "PART" => {
                let channel = casefold(m.param(0));
                self.on_leave(live, &channel, m.nick(), own, RemoteMembership::Leave, m.param(1))
                    .await;
            }
            "KICK" => {
                let channel = casefold(m.param(0));
                let target = m.param(1).to_owned();
                let reason = format!("kicked by {}: {}", m.nick(), m.param(2));
                let ours = casefold(&target) == casefold(&our_nick);
                self.on_leave(live, &channel, &target, ours, RemoteMembership::Kick, &reason).await;
            }
            "QUIT" => {
                let nick = casefold(m.nick());
                let channels: Vec<String> = {
                    let mut state = live.state.lock().expect("lock");
                    state
                        .channels
                        .iter_mut()
                        .filter_map(|(name, c)| c.members.remove(&nick).map(|_| name.clone()))
                        .collect()
                };
                if self.own_nick(m.nick()).is_some() {
                    return;
                }
                let reason = format!("Quit: {}", m.param(0));
                for channel in channels.iter().filter(|c| self.is_reader(c, &live.id)) {
                    let Ok(sender) =
                        self.ghosts.sender(self.ctx.store(), m.nick(), m.userhost()).await
                    else {
                        continue;
                    };
                    let left =
                        ChatMember { reason: Some(reason.clone()), ..ChatMember::left(sender) };
                    let event = RemoteEvent::members(vec![left]);
                    self.queue(&PortalKey::shared(channel.as_str()), &event).await;
                }
            }
            "NICK" => self.on_nick(live, &m, own).await,
            "MODE" if is_channel(m.param(0)) => self.on_mode(live, &m).await,
            // A topic set from Matrix is in the room already.
            "TOPIC" if self.own_nick(m.nick()).is_none() => {
                let channel = casefold(m.param(0));
                if self.is_reader(&channel, &live.id) {
                    let event = RemoteEvent::ChatInfo {
                        name: None,
                        topic: Some(m.param(1).to_owned()),
                        avatar: None,
                        members: Vec::new(),
                        power_levels: None,
                    };
                    self.queue(&PortalKey::shared(channel), &event).await;
                }
            }
            // RPL_TOPIC on join.
            "332" => {
                let channel = casefold(m.param(1));
                let event = RemoteEvent::ChatInfo {
                    name: None,
                    topic: Some(m.param(2).to_owned()),
                    avatar: None,
                    members: Vec::new(),
                    power_levels: None,
                };
                self.queue(&PortalKey::shared(channel), &event).await;
            }
            // RPL_NAMREPLY: `= #chan :@op +voice nick!user@host`.
            "353" => self.on_names(live, &m).await,
            _ => {}
        }
    }

    async fn on_text(&self, live: &Live, m: &Message, own: bool) {
        let target = m.param(0);
        let text = m.param(1);
        if m.source.as_deref().is_none_or(|s| !s.contains('!')) {
            return; // From the server.
        }
        let (body, emote) = match ctcp(text) {
            Some(("ACTION", arg)) => (arg, true),
            Some(_) => return,
            None => (text, false),
        };
        let notice = m.command == "NOTICE";
        let key = if is_channel(target) {
            PortalKey::shared(casefold(target))
        } else if own {
            PortalKey::for_login(casefold(target), live.id.clone())
        } else {
            PortalKey::for_login(casefold(m.nick()), live.id.clone())
        };
        let echo_of = if own {
            // Our own line back: the echo of a Matrix message, or nothing to bridge.
            let mut state = live.state.lock().expect("lock");
            let waited = match m.tag("label") {
                Some(label) => state.labelled.remove(label),
                None if !state.labels => {
                    let folded = casefold(target);
                    let at = state.pending.iter().position(|(t, _)| *t == folded);
                    at.and_then(|i| state.pending.remove(i)).map(|(_, txn)| txn)
                }
                None => None,
            };
            match waited {
                Some(Some(txn)) => Some(txn),
                _ => return,
            }
        } else {
            if self.own_nick(m.nick()).is_some() {
                return; // Another login's line: its own connection confirms it.
            }
            if is_channel(target) && !self.is_reader(&key.chat.0, &live.id) {
                return;
            }
            if m.tag("batch").is_some()
                && let Some(msgid) = m.tag("msgid")
            {
                let alias = format!("{} {msgid}", key.chat);
                if let Ok(Some(_)) = self.ctx.store().kv_get(MSGID_ALIASES, &alias).await {
                    return; // Bridged already, inside a burst.
                }
            }
            None
        };
        let sender = match self.ghosts.sender(self.ctx.store(), m.nick(), m.userhost()).await {
            Ok(sender) => sender,
            Err(e) => return tracing::warn!(error = %e, "could not name a ghost"),
        };
        let nicks = self.channel_nicks(live, key.chat.as_str());
        let mention = |t: &str| find_nicks(t, &|w| nicks.contains(&casefold(w)));
        let mut lookup = Lookup { shared: self };
        let text = to_matrix(body, &mention, &mut lookup);
        let content = match (emote, notice) {
            (true, _) => text.into_emote(),
            (false, true) => text.into_notice(),
            (false, false) => text.into_content(),
        };
        let id = m.tag("msgid").map_or_else(RemoteMessageId::random, RemoteMessageId::from);
        let event = RemoteEvent::Message {
            id,
            sender,
            timestamp: m.tag("time").and_then(parse_time),
            parts: vec![RemotePart { id: RemotePartId::default(), content }],
            reply_to: None,
            thread_root: None,
            echo_of,
        };
        self.queue(&key, &event).await;
    }

    async fn on_join(&self, live: &Live, m: &Message, own: bool) {
        let channel = casefold(m.param(0));
        let nick = m.nick().to_owned();
        if own {
            live.state.lock().expect("lock").channels.entry(channel.clone()).or_default();
            self.readers
                .lock()
                .expect("lock")
                .entry(channel.clone())
                .or_default()
                .insert(live.id.clone());
            tracing::debug!(%channel, login = %live.id, "joined");
            if let Err(e) = self.joined_channel(live, m.param(0)).await {
                tracing::warn!(%channel, error = %e, "could not make the channel's portal");
            }
            return;
        }
        if let Some(c) = live.state.lock().expect("lock").channels.get_mut(&channel) {
            c.members.insert(casefold(&nick), (nick.clone(), String::new()));
        }
        if self.own_nick(&nick).is_some() || !self.is_reader(&channel, &live.id) {
            return;
        }
        if let Ok(sender) = self.ghosts.sender(self.ctx.store(), &nick, m.userhost()).await {
            let event = RemoteEvent::members(vec![ChatMember::joined(sender)]);
            self.queue(&PortalKey::shared(channel), &event).await;
        }
    }

    /// Our login is in a channel: its portal exists, the login's user is in it.
    async fn joined_channel(&self, live: &Live, name: &str) -> BridgeResult {
        let key = PortalKey::shared(casefold(name));
        let store = self.ctx.store();
        store.add_login_to_portal(&live.id, &key).await?;
        let info = PortalInfo {
            name: Some(name.to_owned()),
            invite: vec![live.user_id.clone()],
            ..PortalInfo::default()
        };
        let portal = self.ctx.ensure_portal(&key, &info).await?;
        tracing::debug!(portal = %key, room = %portal.room_id, "portal");
        let membership = store.membership(&portal.room_id, &live.user_id).await?;
        use mxbridge::store::Membership;
        if !matches!(membership, Some(Membership::Join | Membership::Invite)) {
            self.ctx.bot().invite(&portal.room_id, &live.user_id).await?;
        }
        Ok(())
    }

    async fn on_leave(
        &self,
        live: &Live,
        channel: &str,
        nick: &str,
        ours: bool,
        change: RemoteMembership,
        reason: &str,
    ) {
        let key = PortalKey::shared(channel);
        if ours {
            live.state.lock().expect("lock").channels.remove(channel);
            if let Some(set) = self.readers.lock().expect("lock").get_mut(channel) {
                set.remove(&live.id);
            }
            if let Err(e) = self.ctx.store().remove_login_from_portal(&live.id, &key).await {
                tracing::warn!(error = %e, "could not forget a login's channel");
            }
            if change == RemoteMembership::Kick
                && let Ok(Some(portal)) = self.ctx.portal(&key).await
            {
                let bot = self.ctx.bot();
                let _ = bot.kick(&portal.room_id, &live.user_id).reason(reason).await;
            }
            return;
        }
        if let Some(c) = live.state.lock().expect("lock").channels.get_mut(channel) {
            c.members.remove(&casefold(nick));
        }
        if self.own_nick(nick).is_some() || !self.is_reader(channel, &live.id) {
            return;
        }
        if let Ok(sender) = self.ghosts.sender(self.ctx.store(), nick, None).await {
            let reason = Some(reason.to_owned()).filter(|r| !r.is_empty());
            let member = ChatMember { reason, ..ChatMember::new(sender, change) };
            self.queue(&key, &RemoteEvent::members(vec![member])).await;
        }
    }

    async fn on_nick(&self, live: &Live, m: &Message, own: bool) {
        let (old, new) = (m.nick().to_owned(), m.param(0).to_owned());
        if own {
            self.set_nick(live, &new);
        }
        let channels: Vec<String> = {
            let mut state = live.state.lock().expect("lock");
            let mut out = Vec::new();
            for (name, c) in &mut state.channels {
                if let Some((_, modes)) = c.members.remove(&casefold(&old)) {
                    c.members.insert(casefold(&new), (new.clone(), modes));
                    out.push(name.clone());
                }
            }
            out
        };
        if own || self.own_nick(&new).is_some() {
            return;
        }
        // The ghost keeps its identity, renamed once (display names are global).
        let Some(channel) = channels.into_iter().find(|c| self.is_reader(c, &live.id)) else {
            return;
        };
        match self.ghosts.rename(self.ctx.store(), &old, &new, m.userhost()).await {
            Ok(sender) => {
                let event = RemoteEvent::members(vec![ChatMember::joined(sender)]);
                self.queue(&PortalKey::shared(channel), &event).await;
            }
            Err(e) => tracing::warn!(error = %e, "could not rename a ghost"),
        }
    }

    async fn on_mode(&self, live: &Live, m: &Message) {
        let channel = casefold(m.param(0));
        let mut args = m.params.iter().skip(2);
        let mut adding = true;
        let mut changed = Vec::new();
        for c in m.param(1).chars() {
            match c {
                '+' => adding = true,
                '-' => adding = false,
                'q' | 'a' | 'o' | 'h' | 'v' => {
                    let Some(nick) = args.next() else { break };
                    changed.push((nick.clone(), c, adding));
                }
                'b' | 'e' | 'I' | 'k' => {
                    args.next();
                }
                'l' if adding => {
                    args.next();
                }
                _ => {}
            }
        }
        let mut levels = Vec::new();
        {
            let mut state = live.state.lock().expect("lock");
            let Some(c) = state.channels.get_mut(&channel) else { return };
            for (nick, mode, adding) in changed {
                let Some((_, modes)) = c.members.get_mut(&casefold(&nick)) else { continue };
                let before = level_of(modes);
                modes.retain(|m| m != mode);
                if adding {
                    modes.push(mode);
                }
                if level_of(modes) != before {
                    levels.push((nick, level_of(modes)));
                }
            }
        }
        if !self.is_reader(&channel, &live.id) {
            return;
        }
        for (nick, level) in levels {
            if let Some(login) = self.own_nick(&nick) {
                self.set_user_level(&channel, &login, level).await;
                continue;
            }
            if let Ok(sender) = self.ghosts.sender(self.ctx.store(), &nick, None).await {
                let ranked = ChatMember::joined(sender).power_level(level);
                self.queue(
                    &PortalKey::shared(channel.as_str()),
                    &RemoteEvent::members(vec![ranked]),
                )
                .await;
            }
        }
    }

    async fn on_names(&self, live: &Live, m: &Message) {
        let channel = casefold(m.param(2));
        let mut seen = Vec::new();
        {
            let mut state = live.state.lock().expect("lock");
            let Some(c) = state.channels.get_mut(&channel) else { return };
            for entry in m.param(3).split_whitespace() {
                let modes: String = entry.chars().map_while(prefix_mode).collect();
                let rest =
                    &entry[entry.chars().take_while(|c| prefix_mode(*c).is_some()).count()..];
                let (nick, userhost) = match rest.split_once('!') {
                    Some((n, uh)) => (n.to_owned(), Some(uh.to_owned())),
                    None => (rest.to_owned(), None),
                };
                c.members.insert(casefold(&nick), (nick.clone(), modes.clone()));
                seen.push((nick, userhost, modes));
            }
        }
        if !self.is_reader(&channel, &live.id) {
            return;
        }
        let key = PortalKey::shared(channel.as_str());
        for (nick, userhost, modes) in seen {
            if let Some(login) = self.own_nick(&nick) {
                self.set_user_level(&channel, &login, level_of(&modes)).await;
                continue;
            }
            let Ok(sender) = self.ghosts.sender(self.ctx.store(), &nick, userhost.as_deref()).await
            else {
                continue;
            };
            let level = level_of(&modes);
            let mut member = ChatMember::joined(sender);
            if level > 0 {
                member = member.power_level(level);
            }
            self.queue(&key, &RemoteEvent::members(vec![member])).await;
        }
    }

    /// A Matrix user's rank in a channel, as their login has it: their power level in the
    /// portal, set in the portal's order like any member's.
    async fn set_user_level(&self, channel: &str, login: &RemoteLoginId, level: i64) {
        let Some(live) = self.live(login) else { return };
        let nick = self.nick_of(&live.user_id).unwrap_or_else(|| login.to_string());
        let user = RemoteSender::named(nick.as_str(), nick.as_str()).from_login(login.clone());
        let ranked = ChatMember::joined(user).power_level(level);
        self.queue(&PortalKey::shared(channel), &RemoteEvent::members(vec![ranked])).await;
    }

    /// The IRC nick a Matrix user goes by: a ghost's current nick, or a logged-in user's.
    fn nick_of(&self, user_id: &UserId) -> Option<String> {
        let logins = self.logins.lock().expect("lock");
        if let Some(live) = logins.values().find(|l| l.user_id == user_id) {
            let nick = live.state.lock().expect("lock").nick.clone();
            if !nick.is_empty() {
                return Some(nick);
            }
        }
        drop(logins);
        let ctx = &self.ctx;
        self.ghosts.find_nick(|g| {
            ctx.ghost_user_id(&RemoteUserId(g.to_owned())).is_ok_and(|u| u == user_id)
        })
    }

    /// Sends a Matrix message through a login: the lines it becomes, and how it maps.
    async fn send_matrix(
        &self,
        login: &RemoteLoginId,
        key: &PortalKey,
        event_id: &str,
        content: &RoomMessageEventContent,
        prefix: &str,
    ) -> BridgeResult<Delivery> {
        let live = self.live(login).ok_or_else(|| BridgeError::new("the login is not running"))?;
        let sender = self.wait_connected(&live).await?;
        let target = key.chat.as_str().to_owned();
        let (command, emote, text) = match &content.msgtype {
            MessageType::Emote(_) => ("PRIVMSG", true, self.render(content)),
            MessageType::Notice(_) => ("NOTICE", false, self.render(content)),
            MessageType::Text(_) => ("PRIVMSG", false, self.render(content)),
            MessageType::Image(_)
            | MessageType::File(_)
            | MessageType::Audio(_)
            | MessageType::Video(_) => ("PRIVMSG", false, self.media_line(content)),
            other => ("PRIVMSG", false, other.body().to_owned()),
        };
        let text = format!("{prefix}{text}");
        let txn = RemoteTxnId(event_id.to_owned());
        let mut state = live.state.lock().expect("lock");
        let limit = state.text_limit(&target) - if emote { 9 } else { 0 };
        let mut lines: Vec<String> = text
            .split('\n')
            .filter(|l| !l.trim().is_empty())
            .flat_map(|l| split_line(l, limit))
            .collect();
        if lines.is_empty() {
            return Ok(Delivery::Done);
        }
        let max = self.config.max_lines.max(1);
        if lines.len() > max {
            let more = lines.len() - (max - 1);
            lines.truncate(max - 1);
            lines.push(format!("(… {more} more lines not sent)"));
        }
        let echo = state.echo;
        let mut ids = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let body = if emote { format!("\x01ACTION {line}\x01") } else { line.clone() };
            let mut message = Message::new(command, &[&target, &body]);
            let first = (i == 0).then(|| txn.clone());
            if echo && state.labels {
                state.next_label += 1;
                let label = format!("mx{}", state.next_label);
                message = message.with_tag("label", &label);
                state.labelled.insert(label, first);
            } else if echo {
                state.pending.push_back((casefold(&target), first));
            }
            if !sender.send(&message) {
                return Err(BridgeError::new("the IRC connection closed"));
            }
            ids.push(RemoteMessageId(format!("{event_id}.{i}")));
        }
        tracing::debug!(portal = %key, lines = lines.len(), event = event_id, "queued for IRC");
        Ok(if echo { Delivery::Pending(txn) } else { Delivery::Sent(ids) })
    }

    fn render(&self, content: &RoomMessageEventContent) -> String {
        let nick_of = |u: &UserId| self.nick_of(u);
        match ParsedMessage::from_content(content) {
            Some(parsed) => parsed.render(&mut IrcRender { nick_of: &nick_of }),
            None => content.body().to_owned(),
        }
    }

    fn media_line(&self, content: &RoomMessageEventContent) -> String {
        use ruma::events::room::MediaSource;
        let (body, source) = match &content.msgtype {
            MessageType::Image(m) => (&m.body, &m.source),
            MessageType::File(m) => (&m.body, &m.source),
            MessageType::Audio(m) => (&m.body, &m.source),
            MessageType::Video(m) => (&m.body, &m.source),
            other => return other.body().to_owned(),
        };
        let MediaSource::Plain(mxc) = source else { return format!("{body} (encrypted file)") };
        let base = self
            .config
            .media_url
            .clone()
            .unwrap_or_else(|| self.ctx.homeserver().address.to_string());
        let path = mxc.as_str().trim_start_matches("mxc://");
        format!("{body}: {}/_matrix/media/v3/download/{path}", base.trim_end_matches('/'))
    }

    async fn wait_connected(&self, live: &Live) -> BridgeResult<Sender> {
        for _ in 0..100 {
            if let Some(sender) =
                live.state.lock().expect("lock").sender.clone().filter(|s| !s.is_closed())
            {
                return Ok(sender);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(BridgeError::new("the IRC connection is down"))
    }

    fn start_login(self: &Arc<Self>, login: &UserLogin) -> BridgeResult<Arc<Live>> {
        let meta: LoginMeta =
            serde_json::from_value(login.metadata.clone()).map_err(BridgeError::permanent)?;
        let (outcome, _) = watch::channel(None);
        let live = Arc::new(Live {
            id: login.id.clone(),
            user_id: login.user_id.clone(),
            meta,
            state: Mutex::default(),
            outcome,
            task: Mutex::default(),
        });
        if let Some(old) = self.logins.lock().expect("lock").insert(login.id.clone(), live.clone())
        {
            self.stop_login(&old);
        }
        let task = tokio::spawn(self.clone().run(live.clone()));
        *live.task.lock().expect("lock") = Some(task.abort_handle());
        Ok(live)
    }

    fn stop_login(&self, live: &Live) {
        if let Some(task) = live.task.lock().expect("lock").take() {
            task.abort();
        }
        if let Some(sender) = live.state.lock().expect("lock").sender.clone() {
            sender.send(&Message::new("QUIT", &["logged out"]));
        }
        self.dropped(live);
    }

    /// A user's own running login in a portal (state changes carry no login of their own).
    async fn own_login_in(
        &self,
        user_id: &UserId,
        key: &PortalKey,
    ) -> BridgeResult<Option<Arc<Live>>> {
        let logins = self.ctx.store().user_logins_in_portal(user_id, key).await?;
        Ok(logins.iter().find_map(|l| self.live(&l.id)))
    }

    /// The channel an alias in our namespace names, when portals by alias are on for it.
    fn alias_channel(&self, alias: &RoomAliasId) -> Option<String> {
        if self.config.alias_channels.is_empty() || alias.server_name() != self.ctx.server_name() {
            return None;
        }
        let channel = alias.alias().strip_prefix(self.ctx.config().ghost_prefix())?;
        let folded = casefold(channel);
        let allowed = self.config.alias_channels.iter().any(|p| glob_match(&casefold(p), &folded));
        (allowed && valid_channel(channel)).then(|| channel.to_owned())
    }

    /// A Matrix user joined a channel's room by themselves (by its alias, say): their running
    /// login joins the channel when it is not in it (now, or when it is next connected);
    /// without a login, they are told how to get one (in channels whose portals are made by
    /// alias).
    async fn user_joined(&self, user_id: &UserId, portal: &mxbridge::Portal) -> BridgeResult {
        let channel = portal.key.chat.as_str();
        let logins = self.ctx.store().logins_of(user_id).await?;
        if let Some(live) = logins.iter().find_map(|l| self.live(&l.id)) {
            let sender = {
                let state = live.state.lock().expect("lock");
                if state.channels.contains_key(channel) {
                    return Ok(());
                }
                state.sender.clone().filter(|s| !s.is_closed())
            };
            // Kept with the login, so that a connection made later joins it too.
            self.ctx.store().add_login_to_portal(&live.id, &portal.key).await?;
            if let Some(sender) = sender {
                sender.send(&Message::new("JOIN", &[channel]));
            }
            return Ok(());
        }
        let by_alias = self.config.alias_channels.iter().any(|p| glob_match(&casefold(p), channel));
        if by_alias {
            let text = format!(
                "{user_id}: you are not logged in to IRC, so what you say here is not bridged \
                 unless a logged-in user sets a relay; send `login nick` to the bridge bot in a \
                 direct chat to log in."
            );
            self.ctx.bot().send_notice(&portal.room_id, &text).await?;
        }
        Ok(())
    }

    /// The login of the caller of a command.
    async fn caller_login(&self, call: &CommandCall) -> BridgeResult<Arc<Live>> {
        let logins = self.ctx.store().logins_of(&call.event.sender).await?;
        logins
            .iter()
            .find_map(|l| self.live(&l.id))
            .ok_or_else(|| BridgeError::permanent("you are not logged in: use `login` first"))
    }
}

/// Resolves the nicks found in IRC text to pills.
struct Lookup<'a> {
    shared: &'a Shared,
}

impl MentionLookup for Lookup<'_> {
    fn remote_user(&mut self, nick: &str) -> Option<Mention> {
        if let Some(login) = self.shared.own_nick(nick) {
            let live = self.shared.live(&login)?;
            return Some(Mention::new(live.user_id.clone(), nick));
        }
        let ghost = self.shared.ghosts.ghost_of(nick)?;
        let user_id = self.shared.ctx.ghost_user_id(&RemoteUserId(ghost)).ok()?;
        Some(Mention::new(user_id, nick))
    }
}

impl Irc {
    fn ctx(&self) -> &Context {
        &self.shared.ctx
    }
}

impl Bridge for Irc {
    type Config = IrcConfig;
    const NAME: &'static str = "irc";

    fn example_config() -> &'static str {
        "  # The IRC server, host:port.\n  \
         server: 127.0.0.1:6667\n  \
         # TLS to the server (usually port 6697), its certificate checked against the host.\n  \
         tls: false\n  \
         # A PEM file of certificates to trust instead of the system's (a private CA).\n  \
         tls_ca_file: null\n  \
         # The user name (ident) of the bridge's connections.\n  username: matrix\n  \
         # Flood control per connection: this many lines at once, then one per interval.\n  \
         throttle_burst: 5\n  throttle_interval_ms: 500\n  \
         # Matrix messages longer than this many IRC lines are cut.\n  max_lines: 10\n  \
         # The base URL of media links sent to IRC (default: homeserver.address).\n  \
         media_url: null\n  \
         # Lines of one sender that arrive together, or while the channel's last message is\n  \
         # on its way to Matrix (held at most 0.5 s), become one Matrix message (at most\n  \
         # 200 lines, 16 KiB of text).\n  \
         merge_bursts: true\n  \
         # Channels whose rooms are made when someone joins #<ghost prefix><channel>:<domain>\n  \
         # (glob patterns such as \"#matrix-*\"; empty: off). Such rooms are open to anyone on\n  \
         # the homeserver; a joining user's login joins the channel.\n  \
         alias_channels: []\n"
    }

    async fn create(config: IrcConfig, ctx: Context) -> BridgeResult<Self> {
        if config.tls_ca_file.is_some() && !config.tls {
            return Err(BridgeError::permanent("bridge.tls_ca_file is set but bridge.tls is off"));
        }
        let tls = if config.tls {
            mxbridge::install_crypto_provider();
            let tls = crate::conn::tls_config(config.tls_ca_file.as_deref())
                .map_err(|e| BridgeError::permanent(format!("bridge.tls: {e}")))?;
            Some(Arc::new(tls))
        } else {
            None
        };
        Ok(Self {
            shared: Arc::new(Shared {
                ctx,
                config,
                tls,
                ghosts: Ghosts::default(),
                logins: Mutex::default(),
                readers: Mutex::default(),
                own_nicks: Mutex::default(),
            }),
        })
    }

    async fn stop(&self) {
        let logins: Vec<Arc<Live>> =
            self.shared.logins.lock().expect("lock").values().cloned().collect();
        for live in logins {
            self.shared.stop_login(&live);
        }
        // Let the QUITs go out.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    async fn portal_info(&self, key: &PortalKey) -> BridgeResult<Option<PortalInfo>> {
        if let Some(receiver) = &key.receiver {
            let Some(login) = self.ctx().store().login(receiver).await? else { return Ok(None) };
            return Ok(Some(PortalInfo {
                name: Some(key.chat.to_string()),
                topic: Some(format!("Private messages with {} on IRC", key.chat)),
                invite: vec![login.user_id],
                is_direct: true,
                ..PortalInfo::default()
            }));
        }
        let logins = self.ctx().store().logins_in_portal(key).await?;
        Ok(Some(PortalInfo {
            name: Some(key.chat.to_string()),
            invite: logins.into_iter().map(|l| l.user_id).collect(),
            ..PortalInfo::default()
        }))
    }

    fn commands(&self) -> Vec<CommandSpec> {
        vec![
            CommandSpec::new("join", "#CHANNEL", "join an IRC channel (its room invites you)"),
            CommandSpec::new("part", "#CHANNEL", "leave an IRC channel"),
            CommandSpec::new("pm", "NICK", "open a private chat with an IRC nick"),
            CommandSpec::new("nick", "NICK", "change your nick"),
            CommandSpec::new("raw", "LINE", "send a raw IRC line through your connection"),
        ]
    }

    async fn handle_command(&self, call: &CommandCall) -> BridgeResult<String> {
        tracing::debug!(name = call.name, args = ?call.args, "command");
        let live = self.shared.caller_login(call).await?;
        let sender = self.shared.wait_connected(&live).await?;
        match call.name.as_str() {
            "join" => {
                let channel = call.arg(0, "#CHANNEL")?;
                if !is_channel(channel) || channel.contains([',', ' ', '\x07']) {
                    return Err(BridgeError::permanent(format!("{channel} is not a channel name")));
                }
                sender.send(&Message::new("JOIN", &[channel]));
                Ok(format!("Joining {channel}; its room will invite you."))
            }
            "part" => {
                let channel = call.arg(0, "#CHANNEL")?;
                sender.send(&Message::new("PART", &[channel, "left from Matrix"]));
                Ok(format!("Leaving {channel}."))
            }
            "pm" => {
                let nick = call.arg(0, "NICK")?;
                let key = PortalKey::for_login(casefold(nick), live.id.clone());
                let info = PortalInfo {
                    name: Some(nick.to_owned()),
                    topic: Some(format!("Private messages with {nick} on IRC")),
                    invite: vec![live.user_id.clone()],
                    is_direct: true,
                    ..PortalInfo::default()
                };
                self.ctx().ensure_portal(&key, &info).await?;
                Ok(format!("A room for {nick} invites you."))
            }
            "nick" => {
                let nick = call.arg(0, "NICK")?;
                sender.send(&Message::new("NICK", &[nick]));
                Ok(format!("Asked for the nick {nick}."))
            }
            "raw" => {
                let line = call.args.join(" ");
                let message = Message::parse(&line)
                    .ok_or_else(|| BridgeError::permanent("not an IRC line"))?;
                sender.send(&message);
                Ok("Sent.".into())
            }
            _ => Err(BridgeError::permanent("unknown command")),
        }
    }

    async fn handle_message(&self, msg: &MatrixMessage) -> BridgeResult<Delivery> {
        let Some(via) = &msg.sender.via else {
            return Ok(Delivery::NotSupported("no IRC connection carries this room".into()));
        };
        // A reply names whom it answers, as IRC users write it.
        let mut prefix = String::new();
        if let Some(target) = &msg.reply_to {
            let parts = self.ctx().store().message_parts(&target.portal, &target.id).await?;
            if let Some(nick) = parts.first().and_then(|p| self.shared.nick_of(&p.sender)) {
                prefix = format!("{nick}: ");
            }
        }
        self.shared
            .send_matrix(
                &via.login().id,
                &msg.portal.key,
                msg.event.event_id.as_str(),
                &msg.content,
                &prefix,
            )
            .await
    }

    async fn handle_edit(&self, edit: &MatrixEdit) -> BridgeResult<Delivery> {
        let Some(via) = &edit.sender.via else {
            return Ok(Delivery::NotSupported("no IRC connection carries this room".into()));
        };
        // IRC has no edits: the new text goes out marked as a correction.
        let id = format!("{}", edit.event.event_id);
        let delivery = self
            .shared
            .send_matrix(&via.login().id, &edit.portal.key, &id, &edit.new_content, "* ")
            .await?;
        Ok(match delivery {
            Delivery::NotSupported(why) => Delivery::NotSupported(why),
            _ => Delivery::Done,
        })
    }

    async fn handle_chat_info(&self, info: &MatrixChatInfo) -> BridgeResult<Delivery> {
        let ChatInfoChange::Topic(topic) = &info.change else {
            return Ok(Delivery::NotSupported("only the topic is bridged".into()));
        };
        if info.portal.key.receiver.is_some() {
            return Ok(Delivery::NotSupported("private chats have no topic".into()));
        }
        let Some(live) = self.shared.own_login_in(&info.sender.user_id, &info.portal.key).await?
        else {
            return Ok(Delivery::NotSupported("you are not in this channel on IRC".into()));
        };
        let sender = self.shared.wait_connected(&live).await?;
        let topic = topic.clone().unwrap_or_default();
        sender.send(&Message::new("TOPIC", &[info.portal.key.chat.as_str(), &topic]));
        Ok(Delivery::Done)
    }

    async fn query_alias(&self, alias: &RoomAliasId) -> BridgeResult<bool> {
        let Some(channel) = self.shared.alias_channel(alias) else { return Ok(false) };
        let key = PortalKey::shared(casefold(&channel));
        let info = PortalInfo { name: Some(channel.clone()), ..PortalInfo::default() };
        let portal = self.ctx().ensure_portal(&key, &info).await?;
        // Whoever asked for the alias must be able to join: the room is open to the
        // homeserver's users (the join rule, not the room directory).
        let bot = self.ctx().bot();
        let rules = RoomJoinRulesEventContent::new(JoinRule::Public);
        bot.send_state(&portal.room_id, &ruma::events::EmptyStateKey, &rules).await?;
        bot.set_alias(alias, &portal.room_id).replace().await?;
        tracing::info!(%alias, %channel, room = %portal.room_id, "portal made by alias");
        Ok(true)
    }

    async fn handle_membership(&self, membership: &MatrixMembership) -> BridgeResult {
        let Some(portal) = &membership.portal else { return Ok(()) };
        if membership.change == MembershipChange::Joined
            && !membership.target_is_ours
            && portal.key.receiver.is_none()
        {
            return self.shared.user_joined(&membership.target, portal).await;
        }
        // A Matrix user kicks a ghost: the nick is kicked from the channel.
        if membership.change != MembershipChange::Kicked
            || !membership.target_is_ours
            || portal.key.receiver.is_some()
        {
            return Ok(());
        }
        let Some(live) = self.shared.own_login_in(&membership.sender.user_id, &portal.key).await?
        else {
            return Ok(());
        };
        let Some(nick) = self.shared.nick_of(&membership.target) else { return Ok(()) };
        let sender = self.shared.wait_connected(&live).await?;
        let reason = membership
            .event
            .content::<serde_json::Value>()
            .ok()
            .and_then(|c| c["reason"].as_str().map(str::to_owned))
            .unwrap_or_default();
        sender.send(&Message::new("KICK", &[portal.key.chat.as_str(), &nick, &reason]));
        Ok(())
    }

    fn login_flows(&self) -> Vec<LoginFlow> {
        crate::login::flows()
    }

    async fn create_login(
        &self,
        flow_id: &str,
        user_id: &UserId,
    ) -> BridgeResult<Box<dyn AnyLoginProcess>> {
        Ok(Box::new(IrcLogin { flow: flow_id.to_owned(), user_id: user_id.to_owned() }))
    }

    async fn connect_login(&self, login: &UserLogin) -> BridgeResult {
        let live = self.shared.start_login(login)?;
        let mut outcome = live.outcome.subscribe();
        let first =
            tokio::time::timeout(Duration::from_secs(20), outcome.wait_for(Option::is_some)).await;
        match first.ok().and_then(|r| r.ok().map(|o| o.clone())).flatten() {
            Some(Outcome::Connected) => Ok(()),
            Some(Outcome::Refused(why)) => Err(BridgeError::permanent(why)),
            // Still trying, its state reported: nothing more to say now.
            Some(Outcome::Transient(_)) | None => Ok(()),
        }
    }

    async fn logout(&self, login: &UserLogin) -> BridgeResult {
        let live = self.shared.logins.lock().expect("lock").remove(&login.id);
        if let Some(live) = live {
            self.shared.stop_login(&live);
        }
        Ok(())
    }
}

/// The ghost of a sender in a portal, for tests.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_time_becomes_milliseconds() {
        let ts = parse_time("2024-01-02T03:04:05.678Z").unwrap();
        assert_eq!(u64::from(ts.0), 1_704_164_645_678);
        assert_eq!(u64::from(parse_time("1970-01-01T00:00:00Z").unwrap().0), 0);
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn channel_globs_match_whole_names() {
        assert!(glob_match("#*", "#anything"));
        assert!(glob_match("#matrix-*", "#matrix-dev"));
        assert!(!glob_match("#matrix-*", "#matrix"));
        assert!(glob_match("#a?c", "#abc"));
        assert!(!glob_match("#a?c", "#abbc"));
        assert!(glob_match("#*-*-x", "#a-b-c-x"));
        assert!(!glob_match("#lazy", "#lazy2"));
        assert!(glob_match("*", ""));
        assert!(valid_channel("#ok"));
        assert!(!valid_channel("#a,#b"));
        assert!(!valid_channel("#"));
        assert!(!valid_channel("nick"));
    }

    #[test]
    fn operators_moderate() {
        assert_eq!(level_of("o"), 50);
        assert_eq!(level_of("qo"), 50);
        assert_eq!(level_of("h"), 25);
        assert_eq!(level_of("v"), 0);
        assert_eq!(prefix_mode('@'), Some('o'));
    }
}
