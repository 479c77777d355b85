//! Remote Markdown or entities to a Matrix message: HTML within the strict sanitizer's set, pills
//! for mentions, and `m.mentions`.

use std::{collections::BTreeSet, ops::Range};

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};
use ruma::{
    MatrixToUri, OwnedUserId,
    events::{Mentions, room::message::RoomMessageEventContent},
    matrix_uri::MatrixId,
};

use super::{
    entities::{EntityKind, EntityText, utf16_to_byte},
    tree::ParsedMessage,
};

/// A mention found in remote text: the Matrix user (a ghost, or the real user behind a double
/// puppet) and the name its pill shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mention {
    /// Who is mentioned.
    pub user_id: OwnedUserId,
    /// The pill's text (their display name).
    pub name: String,
}

impl Mention {
    /// A mention of `user_id` shown as `name`.
    pub fn new(user_id: OwnedUserId, name: impl Into<String>) -> Self {
        Self { user_id, name: name.into() }
    }
}

/// How a bridge finds mentions in its network's text. Both methods default to finding none, so
/// `()` is the lookup for text without mentions.
pub trait MentionLookup {
    /// The first mention in `text` (outside code and links): its byte range and whom it names.
    /// A Discord bridge, say, finds `<@123>` and returns the ghost of user 123.
    fn find_mention(&mut self, text: &str) -> Option<(Range<usize>, Mention)> {
        let _ = text;
        None
    }

    /// The Matrix user for a mention entity's remote user ID.
    fn remote_user(&mut self, remote_id: &str) -> Option<Mention> {
        let _ = remote_id;
        None
    }
}

impl MentionLookup for () {}

/// A [`MentionLookup`] from a pattern and a function: each match of `pattern` is given to
/// `resolve` (with its captures), and those it resolves become pills. Entities' remote IDs go to
/// `resolve` too, as a text matched by the pattern would.
#[derive(Debug)]
pub struct PatternMentions<'r, F> {
    pattern: &'r regex::Regex,
    resolve: F,
}

impl<'r, F> PatternMentions<'r, F>
where
    F: FnMut(&str) -> Option<Mention>,
{
    /// Mentions are matches of `pattern` whose first capture group (or whole match, without
    /// groups) `resolve` maps to a Matrix user.
    pub fn new(pattern: &'r regex::Regex, resolve: F) -> Self {
        Self { pattern, resolve }
    }
}

impl<F> MentionLookup for PatternMentions<'_, F>
where
    F: FnMut(&str) -> Option<Mention>,
{
    fn find_mention(&mut self, text: &str) -> Option<(Range<usize>, Mention)> {
        for captures in self.pattern.captures_iter(text) {
            let whole = captures.get(0)?;
            let key = captures.get(1).unwrap_or(whole).as_str();
            if let Some(mention) = (self.resolve)(key) {
                return Some((whole.range(), mention));
            }
        }
        None
    }

    fn remote_user(&mut self, remote_id: &str) -> Option<Mention> {
        (self.resolve)(remote_id)
    }
}

/// A message for Matrix built from the network's text: the plain body, the HTML body when there
/// is formatting, and the users mentioned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MatrixText {
    /// The plain-text body (pills as their names).
    pub body: String,
    /// The HTML body; `None` when the text has no formatting.
    pub html: Option<String>,
    /// The users mentioned, for `m.mentions`.
    pub mentions: BTreeSet<OwnedUserId>,
    /// Whether the whole room is mentioned (`m.mentions.room`): for the bridge to set when
    /// its network's text pings everyone.
    pub mentions_room: bool,
}

impl MatrixText {
    /// From the network's Markdown (CommonMark with strikethrough and tables; `||spoiler||`
    /// inside a run of text; a line break is a line break, as chats mean it). Raw HTML in the
    /// Markdown is shown as text, links other than `http(s)`, `ftp`, `mailto` and `magnet`
    /// keep only their text, and images their alternative text. Links to `matrix.to` users
    /// count as mentions.
    pub fn from_markdown(markdown: &str, lookup: &mut (impl MentionLookup + ?Sized)) -> Self {
        let mut w = Writer::new(markdown, lookup);
        let options = Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TABLES;
        for (event, range) in Parser::new_ext(markdown, options).into_offset_iter() {
            w.event(event, range);
        }
        w.flush();
        w.close_spoiler();
        let html = unwrap_single_paragraph(w.html);
        Self::from_html_parts(html, w.mentions)
    }

    /// From text and entities (offsets and lengths in UTF-16 code units). Ranges past the end
    /// are clamped, ranges that split a character are widened to it, overlapping ranges are
    /// split so that the HTML nests; beyond the first thousand, entities are ignored. Mention
    /// entities go through
    /// [`MentionLookup::remote_user`]; those it does not know stay text.
    pub fn from_entities(input: &EntityText, lookup: &mut (impl MentionLookup + ?Sized)) -> Self {
        let (html, mentions) = entities_to_html(input, lookup);
        Self::from_html_parts(html, mentions)
    }

    fn from_html_parts(html: String, mentions: BTreeSet<OwnedUserId>) -> Self {
        let body = ParsedMessage::from_html(&html).to_plain();
        let plain_html = escape_text(&body).replace('\n', "<br>");
        let html = (html != plain_html).then_some(html);
        Self { body, html, mentions, mentions_room: false }
    }

    fn mentions(&self) -> Mentions {
        let mut mentions = Mentions::with_user_ids(self.mentions.iter().cloned());
        mentions.room = self.mentions_room;
        mentions
    }

    /// An `m.text` message, with `m.mentions` (empty when no one is mentioned).
    pub fn into_content(self) -> RoomMessageEventContent {
        let mentions = self.mentions();
        match self.html {
            Some(html) => RoomMessageEventContent::text_html(self.body, html),
            None => RoomMessageEventContent::text_plain(self.body),
        }
        .add_mentions(mentions)
    }

    /// An `m.notice` message, with `m.mentions`.
    pub fn into_notice(self) -> RoomMessageEventContent {
        let mentions = self.mentions();
        match self.html {
            Some(html) => RoomMessageEventContent::notice_html(self.body, html),
            None => RoomMessageEventContent::notice_plain(self.body),
        }
        .add_mentions(mentions)
    }

    /// An `m.emote` message, with `m.mentions`.
    pub fn into_emote(self) -> RoomMessageEventContent {
        let mentions = self.mentions();
        match self.html {
            Some(html) => RoomMessageEventContent::emote_html(self.body, html),
            None => RoomMessageEventContent::emote_plain(self.body),
        }
        .add_mentions(mentions)
    }
}

/// Escapes text as the HTML serializer does, so that sanitizing the output changes nothing:
/// the parser also turns `\r\n` and `\r` into `\n` and drops NUL, so they go here.
pub(crate) fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\0' => {}
            '\r' if chars.peek() == Some(&'\n') => {}
            '\r' => out.push('\n'),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\u{a0}' => out.push_str("&nbsp;"),
            c => out.push(c),
        }
    }
    out
}

fn escape_attr(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\0' => {}
            '\r' if chars.peek() == Some(&'\n') => {}
            '\r' => out.push('\n'),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\u{a0}' => out.push_str("&nbsp;"),
            c => out.push(c),
        }
    }
    out
}

/// The link target as the strict sanitizer keeps it, or `None` for other schemes.
fn allowed_href(url: &str) -> Option<&str> {
    let url = url.trim();
    let scheme = url.split_once(':')?.0.to_ascii_lowercase();
    matches!(scheme.as_str(), "https" | "http" | "ftp" | "mailto" | "magnet").then_some(url)
}

/// The user a `matrix.to` link names, if it names one.
fn linked_user(url: &str) -> Option<OwnedUserId> {
    match MatrixToUri::parse(url).ok()?.id() {
        MatrixId::User(user) => Some(user.clone()),
        _ => None,
    }
}

fn pill(html: &mut String, mention: &Mention) {
    html.push_str("<a href=\"");
    html.push_str(&escape_attr(&mention.user_id.matrix_to_uri().to_string()));
    html.push_str("\">");
    html.push_str(&escape_text(&mention.name));
    html.push_str("</a>");
}

fn language_class(language: &str) -> Option<&str> {
    let language = language.split_whitespace().next()?;
    language
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '#' | '.'))
        .then_some(language)
}

fn open_code_block(html: &mut String, language: Option<&str>) {
    match language.and_then(language_class) {
        Some(language) => {
            html.push_str("<pre><code class=\"language-");
            html.push_str(&escape_attr(language));
            html.push_str("\">");
        }
        None => html.push_str("<pre><code>"),
    }
}

/// `<p>x</p>` alone becomes `x`, as a one-line chat message is sent.
fn unwrap_single_paragraph(html: String) -> String {
    if let Some(inner) = html.strip_prefix("<p>").and_then(|h| h.strip_suffix("</p>"))
        && !inner.contains("<p>")
        && !inner.contains("</p>")
    {
        return inner.to_owned();
    }
    html
}

/// How deep the HTML built from Markdown nests at most.
const MAX_NESTING: usize = 32;

struct Writer<'l, L: ?Sized> {
    html: String,
    /// Text not yet written.
    pending: String,
    mentions: BTreeSet<OwnedUserId>,
    lookup: &'l mut L,
    /// The Markdown.
    source: &'l str,
    /// Where the text in `pending` ends in the Markdown.
    pending_end: usize,
    /// For each open element of the Markdown, whether it was written.
    open: Vec<bool>,
    /// For each open element of the Markdown, where it ends there.
    open_ends: Vec<usize>,
    /// The depth (open elements) at which a spoiler is open.
    spoiler_at: Option<usize>,
    /// For each open link, whether an `<a>` was written for it.
    links: Vec<bool>,
    in_code_block: bool,
    in_table_head: bool,
    in_tbody: bool,
}

impl<'l, L: MentionLookup + ?Sized> Writer<'l, L> {
    fn new(source: &'l str, lookup: &'l mut L) -> Self {
        Self {
            source,
            pending_end: 0,
            open_ends: Vec::new(),
            spoiler_at: None,
            html: String::new(),
            pending: String::new(),
            mentions: BTreeSet::new(),
            lookup,
            open: Vec::new(),
            links: Vec::new(),
            in_code_block: false,
            in_table_head: false,
            in_tbody: false,
        }
    }

    fn event(&mut self, event: Event<'_>, range: Range<usize>) {
        // The parser splits text at characters that might have been markup; mentions and
        // spoilers are found in the whole run.
        if let Event::Text(text) = &event
            && !self.in_code_block
            && self.links.is_empty()
        {
            self.pending.push_str(text);
            self.pending_end = range.end;
            return;
        }
        self.flush();
        if let Event::Start(_) = &event {
            self.open_ends.push(range.end);
        }
        // A spoiler's `||` pair is on one line.
        if matches!(event, Event::SoftBreak | Event::HardBreak)
            && self.spoiler_at == Some(self.open.len())
        {
            self.close_spoiler();
        }
        if let Event::End(_) = &event {
            self.open_ends.pop();
            // A spoiler still open when the element holding it ends, ends with it.
            if self.spoiler_at.is_some_and(|depth| depth >= self.open.len()) {
                self.close_spoiler();
            }
        }
        match event {
            // Elements deeper than `MAX_NESTING` are left out (their text stays).
            Event::Start(tag) if self.open.len() >= MAX_NESTING => {
                match tag {
                    Tag::Link { .. } => self.links.push(false),
                    Tag::CodeBlock(_) => self.in_code_block = true,
                    _ => {}
                }
                self.open.push(false);
            }
            Event::Start(tag) => {
                self.start(tag);
                self.open.push(true);
            }
            Event::End(tag) => match self.open.pop() {
                Some(true) | None => self.end(tag),
                Some(false) => match tag {
                    TagEnd::Link => _ = self.links.pop(),
                    TagEnd::CodeBlock => self.in_code_block = false,
                    _ => {}
                },
            },
            Event::Text(text) => self.html.push_str(&escape_text(&text)),
            Event::Code(code) => {
                self.html.push_str("<code>");
                self.html.push_str(&escape_text(&code));
                self.html.push_str("</code>");
            }
            Event::Html(raw) | Event::InlineHtml(raw) => {
                let raw = raw.strip_suffix('\n').unwrap_or(&raw);
                self.html.push_str(&escape_text(raw).replace('\n', "<br>"));
            }
            Event::SoftBreak | Event::HardBreak => self.html.push_str("<br>"),
            Event::Rule => self.html.push_str("<hr>"),
            Event::TaskListMarker(done) => self.html.push_str(if done { "[x] " } else { "[ ] " }),
            Event::FootnoteReference(name) => {
                self.html.push_str(&escape_text(&format!("[^{name}]")));
            }
            Event::InlineMath(math) | Event::DisplayMath(math) => {
                self.html.push_str(&escape_text(&math));
            }
        }
    }

    fn start(&mut self, tag: Tag<'_>) {
        let html = &mut self.html;
        match tag {
            Tag::Paragraph | Tag::HtmlBlock => html.push_str("<p>"),
            Tag::Heading { level, .. } => html.push_str(&format!("<{level}>")),
            Tag::BlockQuote(_) => html.push_str("<blockquote>"),
            Tag::CodeBlock(kind) => {
                let language = match &kind {
                    CodeBlockKind::Fenced(info) => Some(&**info),
                    CodeBlockKind::Indented => None,
                };
                open_code_block(html, language);
                self.in_code_block = true;
            }
            Tag::List(Some(1)) => html.push_str("<ol>"),
            Tag::List(Some(start)) => html.push_str(&format!("<ol start=\"{start}\">")),
            Tag::List(None) => html.push_str("<ul>"),
            Tag::Item => html.push_str("<li>"),
            Tag::Emphasis => html.push_str("<em>"),
            Tag::Strong => html.push_str("<strong>"),
            Tag::Strikethrough => html.push_str("<del>"),
            Tag::Link { dest_url, .. } => match allowed_href(&dest_url) {
                Some(url) => {
                    if let Some(user) = linked_user(url) {
                        self.mentions.insert(user);
                    }
                    html.push_str("<a href=\"");
                    html.push_str(&escape_attr(url));
                    html.push_str("\">");
                    self.links.push(true);
                }
                None => self.links.push(false),
            },
            Tag::Table(_) => html.push_str("<table>"),
            Tag::TableHead => {
                html.push_str("<thead><tr>");
                self.in_table_head = true;
            }
            Tag::TableRow => {
                if !self.in_tbody {
                    html.push_str("<tbody>");
                    self.in_tbody = true;
                }
                html.push_str("<tr>");
            }
            Tag::TableCell => html.push_str(if self.in_table_head { "<th>" } else { "<td>" }),
            _ => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        let html = &mut self.html;
        match tag {
            TagEnd::Paragraph | TagEnd::HtmlBlock => html.push_str("</p>"),
            TagEnd::Heading(level) => html.push_str(&format!("</{level}>")),
            TagEnd::BlockQuote(_) => html.push_str("</blockquote>"),
            TagEnd::CodeBlock => {
                html.push_str("</code></pre>");
                self.in_code_block = false;
            }
            TagEnd::List(true) => html.push_str("</ol>"),
            TagEnd::List(false) => html.push_str("</ul>"),
            TagEnd::Item => html.push_str("</li>"),
            TagEnd::Emphasis => html.push_str("</em>"),
            TagEnd::Strong => html.push_str("</strong>"),
            TagEnd::Strikethrough => html.push_str("</del>"),
            // The guard pops the link either way; only a written `<a>` is closed.
            TagEnd::Link if self.links.pop() == Some(true) => html.push_str("</a>"),
            TagEnd::Table => {
                if self.in_tbody {
                    html.push_str("</tbody>");
                    self.in_tbody = false;
                }
                html.push_str("</table>");
            }
            TagEnd::TableHead => {
                html.push_str("</tr></thead>");
                self.in_table_head = false;
            }
            TagEnd::TableRow => html.push_str("</tr>"),
            TagEnd::TableCell => html.push_str(if self.in_table_head { "</th>" } else { "</td>" }),
            _ => {}
        }
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            self.text(&pending);
        }
    }

    fn close_spoiler(&mut self) {
        if self.spoiler_at.take().is_some() {
            self.html.push_str("</span>");
        }
    }

    /// Text outside code and links: spoilers, then mentions. A spoiler opens at a `||` that
    /// has a partner later on its line, and closes at a `||` at its own depth (so it may hold
    /// formatting), else at the end of the line or of the element that holds it.
    fn text(&mut self, mut rest: &str) {
        while let Some(at) = rest.find("||") {
            self.mentions_in(&rest[..at]);
            let after = &rest[at + 2..];
            match self.spoiler_at {
                Some(depth) if depth == self.open.len() => self.close_spoiler(),
                Some(_) => self.html.push_str("||"),
                None => {
                    let element_end = self.open_ends.last().copied().unwrap_or(self.source.len());
                    let later = self.source.get(self.pending_end..element_end).unwrap_or("");
                    let later = later.split('\n').next().unwrap_or("");
                    if after.contains("||") || later.contains("||") {
                        self.html.push_str("<span data-mx-spoiler=\"\">");
                        self.spoiler_at = Some(self.open.len());
                    } else {
                        self.html.push_str("||");
                    }
                }
            }
            rest = after;
        }
        self.mentions_in(rest);
    }

    fn mentions_in(&mut self, mut rest: &str) {
        while let Some((range, mention)) = self.lookup.find_mention(rest) {
            if range.start >= range.end
                || range.end > rest.len()
                || !rest.is_char_boundary(range.start)
                || !rest.is_char_boundary(range.end)
            {
                break;
            }
            self.html.push_str(&escape_text(&rest[..range.start]));
            pill(&mut self.html, &mention);
            self.mentions.insert(mention.user_id);
            rest = &rest[range.end..];
        }
        self.html.push_str(&escape_text(rest));
    }
}

/// How many entities of a message count (Telegram allows 100): the rest are ignored, which
/// bounds the work a hostile message can cause.
const MAX_ENTITIES: usize = 1000;

struct Span<'k> {
    start: usize,
    end: usize,
    kind: &'k EntityKind,
    /// The opening tag, or `None` when the entity writes no element.
    open: Option<String>,
    close: &'static str,
}

fn entities_to_html(
    input: &EntityText,
    lookup: &mut (impl MentionLookup + ?Sized),
) -> (String, BTreeSet<OwnedUserId>) {
    let text = input.text.as_str();
    let mut mentions = BTreeSet::new();
    let mut spans = Vec::new();
    for entity in input.entities.iter().take(MAX_ENTITIES) {
        let start = utf16_to_byte(text, entity.offset, false);
        let end = utf16_to_byte(text, entity.offset.saturating_add(entity.length), true);
        if start >= end {
            continue;
        }
        let (open, close) = match &entity.kind {
            EntityKind::Bold => (Some("<strong>".to_owned()), "</strong>"),
            EntityKind::Italic => (Some("<em>".to_owned()), "</em>"),
            EntityKind::Underline => (Some("<u>".to_owned()), "</u>"),
            EntityKind::Strikethrough => (Some("<del>".to_owned()), "</del>"),
            EntityKind::Spoiler => (Some("<span data-mx-spoiler=\"\">".to_owned()), "</span>"),
            EntityKind::Code => (Some("<code>".to_owned()), "</code>"),
            EntityKind::Pre { language } => {
                let mut open = String::new();
                open_code_block(&mut open, language.as_deref());
                (Some(open), "</code></pre>")
            }
            EntityKind::Blockquote => (Some("<blockquote>".to_owned()), "</blockquote>"),
            EntityKind::Color { fg, bg } => {
                let fg = fg.clone().and_then(super::tree::hex_color);
                let bg = bg.clone().and_then(super::tree::hex_color);
                // As the sanitizer writes it: a span, its attributes in order.
                let mut open = String::from("<span");
                if let Some(bg) = &bg {
                    open.push_str(&format!(" data-mx-bg-color=\"{bg}\""));
                }
                if let Some(fg) = &fg {
                    open.push_str(&format!(" data-mx-color=\"{fg}\""));
                }
                open.push('>');
                ((fg.is_some() || bg.is_some()).then_some(open), "</span>")
            }
            EntityKind::TextLink { url } => (link_open(url, &mut mentions), "</a>"),
            EntityKind::Url => {
                let url = &text[start..end];
                let url = if url.contains("://") || url.starts_with("mailto:") {
                    url.to_owned()
                } else {
                    format!("https://{url}")
                };
                (link_open(&url, &mut mentions), "</a>")
            }
            EntityKind::Mention { user } => match lookup.remote_user(user) {
                Some(mention) => {
                    let href = mention.user_id.matrix_to_uri().to_string();
                    mentions.insert(mention.user_id);
                    (Some(format!("<a href=\"{}\">", escape_attr(&href))), "</a>")
                }
                None => (None, ""),
            },
        };
        if open.is_some() {
            spans.push(Span { start, end, kind: &entity.kind, open, close });
        }
    }

    let mut bounds: Vec<usize> = vec![0, text.len()];
    let mut block_bounds = BTreeSet::new();
    for span in &spans {
        bounds.extend([span.start, span.end]);
        if matches!(span.kind, EntityKind::Pre { .. } | EntityKind::Blockquote) {
            block_bounds.extend([span.start, span.end]);
        }
    }
    bounds.sort_unstable();
    bounds.dedup();

    let mut html = String::with_capacity(text.len() * 2);
    let mut stack: Vec<usize> = Vec::new();
    for window in bounds.windows(2) {
        let (a, b) = (window[0], window[1]);
        let mut active: Vec<usize> =
            (0..spans.len()).filter(|&i| spans[i].start <= a && spans[i].end >= b).collect();
        active.sort_by(|&x, &y| {
            let (x, y) = (&spans[x], &spans[y]);
            x.start.cmp(&y.start).then(y.end.cmp(&x.end))
        });
        // No link inside a link: HTML would close the outer one.
        let mut in_anchor = false;
        active.retain(|&i| {
            let anchor = spans[i].close == "</a>";
            let keep = !(anchor && in_anchor);
            in_anchor |= anchor;
            keep
        });
        let common = stack.iter().zip(&active).take_while(|(x, y)| x == y).count();
        while stack.len() > common {
            let i = stack.pop().unwrap_or_default();
            html.push_str(spans[i].close);
        }
        for &i in &active[common..] {
            html.push_str(spans[i].open.as_deref().unwrap_or_default());
            stack.push(i);
        }
        let mut segment = &text[a..b];
        if block_bounds.contains(&a) {
            segment = segment.strip_prefix('\n').unwrap_or(segment);
        }
        if block_bounds.contains(&b) {
            segment = segment.strip_suffix('\n').unwrap_or(segment);
        }
        let verbatim = stack.iter().any(|&i| matches!(spans[i].kind, EntityKind::Pre { .. }));
        if verbatim {
            html.push_str(&escape_text(segment));
        } else {
            html.push_str(&escape_text(segment).replace('\n', "<br>"));
        }
    }
    while let Some(i) = stack.pop() {
        html.push_str(spans[i].close);
    }
    (html, mentions)
}

fn link_open(url: &str, mentions: &mut BTreeSet<OwnedUserId>) -> Option<String> {
    let url = allowed_href(url)?;
    if let Some(user) = linked_user(url) {
        mentions.insert(user);
    }
    Some(format!("<a href=\"{}\">", escape_attr(url)))
}
