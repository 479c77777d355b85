//! Matrix HTML as a tree of the constructs a network can express.

use ruma::{
    MatrixToUri, MatrixUri, OwnedUserId,
    events::{
        Mentions,
        room::message::{MessageFormat, MessageType, Relation, RoomMessageEventContent},
    },
    html::{Html, NodeData, NodeRef},
    matrix_uri::MatrixId,
};

/// One piece of a message. Inline pieces and blocks (paragraphs, quotes, lists, ...) share the
/// type; a renderer separates the blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Node {
    /// Text, with HTML whitespace already collapsed.
    Text(String),
    /// `<b>`, `<strong>`.
    Bold(Vec<Node>),
    /// `<i>`, `<em>`.
    Italic(Vec<Node>),
    /// `<u>`.
    Underline(Vec<Node>),
    /// `<del>`, `<s>`, `<strike>`.
    Strikethrough(Vec<Node>),
    /// Inline `<code>`.
    Code(String),
    /// A link that is not a mention.
    Link {
        /// The URL.
        url: String,
        /// What the link shows.
        children: Vec<Node>,
    },
    /// A pill: a link to a Matrix user.
    UserMention {
        /// Who is mentioned.
        user_id: OwnedUserId,
        /// What the pill shows (usually the display name).
        children: Vec<Node>,
    },
    /// A link to a room (by ID or alias) or to an event in one.
    RoomMention {
        /// The link as sent (`https://matrix.to/#/...` or `matrix:...`).
        url: String,
        /// The room ID or alias.
        room: String,
        /// What the link shows.
        children: Vec<Node>,
    },
    /// `<span data-mx-spoiler>`.
    Spoiler {
        /// The reason given, if any.
        reason: Option<String>,
        /// The hidden content.
        children: Vec<Node>,
    },
    /// `<font>` or `<span>` with `data-mx-color` or `data-mx-bg-color` (or `<font color>`).
    Color {
        /// The text colour, as `#rrggbb`.
        fg: Option<String>,
        /// The background colour, as `#rrggbb`.
        bg: Option<String>,
        /// The coloured content.
        children: Vec<Node>,
    },
    /// `<br>`.
    LineBreak,
    /// `<img>`: only its alternative text and `mxc://` source are kept.
    Image {
        /// The `alt` (or `title`) text.
        alt: String,
        /// The `mxc://` URI.
        src: Option<String>,
    },
    /// `<p>`, `<div>` and other blocks of text.
    Paragraph(Vec<Node>),
    /// `<h1>` to `<h6>`.
    Heading {
        /// 1 to 6.
        level: u8,
        /// The heading's content.
        children: Vec<Node>,
    },
    /// `<blockquote>`.
    Quote(Vec<Node>),
    /// `<pre>`, with the language of a `<code class="language-...">` inside.
    CodeBlock {
        /// The language, if given.
        language: Option<String>,
        /// The code, verbatim.
        code: String,
    },
    /// `<ul>` or `<ol>`.
    List {
        /// The first number of an ordered list; `None` for bullets.
        start: Option<u64>,
        /// The items, each a sequence of nodes.
        items: Vec<Vec<Node>>,
    },
    /// `<hr>`.
    Rule,
    /// `<table>`: its rows, header rows first as sent.
    Table(Vec<TableRow<Vec<Node>>>),
}

impl Node {
    /// Whether a renderer puts this node on lines of its own.
    pub fn is_block(&self) -> bool {
        matches!(
            self,
            Node::Paragraph(_)
                | Node::Heading { .. }
                | Node::Quote(_)
                | Node::CodeBlock { .. }
                | Node::List { .. }
                | Node::Rule
                | Node::Table(_)
        )
    }
}

/// A row of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRow<T> {
    /// Whether its cells are `<th>` (or it sits in `<thead>`).
    pub header: bool,
    /// The cells.
    pub cells: Vec<T>,
}

/// A Matrix message parsed for rendering to a network: its tree, without the reply fallback, and
/// whom it mentions.
#[derive(Debug, Clone, Default)]
pub struct ParsedMessage {
    /// The content, in order.
    pub nodes: Vec<Node>,
    /// The message's `m.mentions`, if it had one. Only these count as mentions: a pill without
    /// them is a link to a user, not a ping.
    pub mentions: Option<Mentions>,
}

impl ParsedMessage {
    /// Parses HTML (a `formatted_body`), dropping a reply fallback (`<mx-reply>`) and anything
    /// that is not text (`<script>`, `<style>`, comments...). Unclosed tags are closed.
    ///
    /// HTML nested deeper than a message plausibly is (hundreds of levels) is read as its text
    /// only: the parser's tree could not even be dropped within a thread's stack.
    pub fn from_html(html: &str) -> Self {
        let parsed = parse_html(html);
        let mut nodes = Vec::new();
        for child in parsed.children() {
            parse_node(&child, &mut nodes, 0);
        }
        Self { nodes: trim_blocks(nodes), mentions: None }
    }

    /// A plain-text body as one run of text with its line breaks.
    pub fn from_plain(text: &str) -> Self {
        let mut nodes = Vec::new();
        for (i, line) in text.split('\n').enumerate() {
            if i > 0 {
                nodes.push(Node::LineBreak);
            }
            if !line.is_empty() {
                nodes.push(Node::Text(line.to_owned()));
            }
        }
        Self { nodes, mentions: None }
    }

    /// The message a room event carries: for an edit, its new content. The HTML body is used
    /// when there is one, else the plain body (whose reply fallback, the leading `> ` lines, is
    /// dropped on a reply). `None` for message types without text (location, verification,
    /// custom); the caption of media is used when present, else their body.
    pub fn from_content(content: &RoomMessageEventContent) -> Option<Self> {
        let (msgtype, mentions, is_reply) = match &content.relates_to {
            Some(Relation::Replacement(r)) => {
                (&r.new_content.msgtype, r.new_content.mentions.as_ref(), false)
            }
            Some(Relation::Reply { .. }) => (&content.msgtype, content.mentions.as_ref(), true),
            Some(Relation::Thread(t)) => (
                &content.msgtype,
                content.mentions.as_ref(),
                !t.is_falling_back && t.in_reply_to.is_some(),
            ),
            _ => (&content.msgtype, content.mentions.as_ref(), false),
        };
        let (body, formatted) = match msgtype {
            MessageType::Text(m) => (m.body.as_str(), &m.formatted),
            MessageType::Notice(m) => (m.body.as_str(), &m.formatted),
            MessageType::Emote(m) => (m.body.as_str(), &m.formatted),
            MessageType::Image(m) => (m.caption().unwrap_or(&m.body), &m.formatted),
            MessageType::File(m) => (m.caption().unwrap_or(&m.body), &m.formatted),
            MessageType::Audio(m) => (m.caption().unwrap_or(&m.body), &m.formatted),
            MessageType::Video(m) => (m.caption().unwrap_or(&m.body), &m.formatted),
            _ => return None,
        };
        let html = formatted.as_ref().filter(|f| f.format == MessageFormat::Html);
        let mut parsed = match html.filter(|f| nesting(&f.body) <= MAX_HTML_NESTING) {
            Some(f) => Self::from_html(&f.body),
            None if is_reply => Self::from_plain(strip_plain_reply_fallback(body)),
            None => Self::from_plain(body),
        };
        parsed.mentions = mentions.cloned();
        Some(parsed)
    }

    /// The users the message mentions (its `m.mentions`), in ID order.
    pub fn mentioned_users(&self) -> impl Iterator<Item = &OwnedUserId> {
        self.mentions.iter().flat_map(|m| m.user_ids.iter())
    }

    /// Whether the message mentions the whole room (`@room` in its `m.mentions`).
    pub fn mentions_room(&self) -> bool {
        self.mentions.as_ref().is_some_and(|m| m.room)
    }
}

/// How deep HTML may nest (by [`nesting`]) to be parsed as it is.
pub(crate) const MAX_HTML_NESTING: usize = 256;

/// Parses HTML with ruma's parser; too deeply nested HTML loses its tags first.
pub(crate) fn parse_html(html: &str) -> Html {
    if nesting(html) <= MAX_HTML_NESTING {
        Html::parse(html)
    } else {
        Html::parse(&strip_tags(html))
    }
}

/// Elements that never hold others, or that close themselves when a sibling opens.
const NOT_NESTING: [&str; 21] = [
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr", "p", "li", "dt", "dd", "tr", "td", "th", "option",
];

/// An upper estimate of how deep `html`'s elements nest: start tags minus end tags, not
/// counting void elements and those that close themselves.
pub(crate) fn nesting(html: &str) -> usize {
    let bytes = html.as_bytes();
    let (mut depth, mut max) = (0usize, 0usize);
    let mut i = 0;
    while let Some(at) = bytes[i..].iter().position(|&b| b == b'<') {
        i += at + 1;
        match bytes.get(i) {
            Some(b'/') => depth = depth.saturating_sub(1),
            Some(b) if b.is_ascii_alphabetic() => {
                let len = bytes[i..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'-'))
                    .unwrap_or(bytes.len() - i);
                let name = html[i..i + len].to_ascii_lowercase();
                let close = bytes[i..].iter().position(|&b| b == b'>');
                let self_closing = close.is_some_and(|c| c > 0 && bytes[i + c - 1] == b'/');
                if !self_closing && !NOT_NESTING.contains(&name.as_str()) {
                    depth += 1;
                    max = max.max(depth);
                }
            }
            _ => {}
        }
    }
    max
}

/// `html` without its tags (text and character references stay).
fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        if after.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '!') {
            match after.find('>') {
                Some(close) => rest = &after[close + 1..],
                None => return out,
            }
        } else {
            out.push_str("&lt;");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A plain body without the leading `> ` lines of a reply fallback and the blank line after.
fn strip_plain_reply_fallback(body: &str) -> &str {
    if !body.starts_with("> ") {
        return body;
    }
    let mut rest = body;
    while rest.starts_with("> ") || rest.starts_with(">\n") {
        rest = rest.split_once('\n').map_or("", |(_, r)| r);
    }
    rest.strip_prefix('\n').unwrap_or(rest)
}

/// A colour attribute as `#rrggbb` (lower case), when it is one.
pub(crate) fn hex_color(value: String) -> Option<String> {
    let hex = value.trim().strip_prefix('#')?;
    (hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("#{}", hex.to_ascii_lowercase()))
}

fn attr(node: &NodeRef, name: &str) -> Option<String> {
    let element = node.as_element()?;
    let attrs = element.attrs.borrow();
    attrs.iter().find(|a| &*a.name.local == name).map(|a| a.value.to_string())
}

fn children_of(node: &NodeRef, depth: usize) -> Vec<Node> {
    let mut out = Vec::new();
    for child in node.children() {
        parse_node(&child, &mut out, depth + 1);
    }
    out
}

/// Children of a block: whitespace at its edges and next to inner blocks goes.
fn block_children(node: &NodeRef, depth: usize) -> Vec<Node> {
    trim_blocks(children_of(node, depth))
}

/// Drops whitespace-only text at the edges of a sequence and next to blocks, and trims the
/// spaces that touch them.
fn trim_blocks(nodes: Vec<Node>) -> Vec<Node> {
    let blocks: Vec<bool> = nodes.iter().map(Node::is_block).collect();
    let mut out = Vec::with_capacity(nodes.len());
    for (i, mut node) in nodes.into_iter().enumerate() {
        if blocks[i] {
            out.push(node);
            continue;
        }
        if i == 0 || blocks[i - 1] {
            trim_edge(&mut node, true);
        }
        if blocks.get(i + 1).is_none_or(|b| *b) {
            trim_edge(&mut node, false);
        }
        if !matches!(&node, Node::Text(t) if t.is_empty()) {
            out.push(node);
        }
    }
    out
}

/// Collapses whitespace runs that hold a line break to one space (HTML's rendering of source
/// line breaks); other spaces stay.
fn collapse(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    for c in text.chars() {
        if matches!(c, ' ' | '\t' | '\n' | '\r') {
            run.push(c);
        } else {
            flush_run(&mut out, &mut run);
            out.push(c);
        }
    }
    flush_run(&mut out, &mut run);
    out
}

fn flush_run(out: &mut String, run: &mut String) {
    if run.contains(['\n', '\r', '\t']) {
        out.push(' ');
    } else {
        out.push_str(run);
    }
    run.clear();
}

/// All the text under a node, `<br>` as a line break (without recursion: nesting is the
/// sender's to choose).
fn text_content(node: &NodeRef, out: &mut String) {
    let mut stack = vec![node.clone()];
    while let Some(node) = stack.pop() {
        match node.data() {
            NodeData::Text(t) => out.push_str(&t.borrow()),
            NodeData::Element(e) if &*e.name.local == "br" => out.push('\n'),
            NodeData::Element(_) => {
                let children: Vec<NodeRef> = node.children().collect();
                stack.extend(children.into_iter().rev());
            }
            _ => {}
        }
    }
}

/// How deep elements nest in the tree; deeper ones give only their text, so that rendering
/// (which recurses) stays within any thread's stack.
const MAX_DEPTH: usize = 48;

fn parse_node(node: &NodeRef, out: &mut Vec<Node>, depth: usize) {
    let element = match node.data() {
        NodeData::Text(t) => {
            let mut text = collapse(&t.borrow());
            if matches!(out.last(), Some(Node::LineBreak)) {
                // A line starts with no space.
                text = text.trim_start().to_owned();
            }
            if let Some(Node::Text(prev)) = out.last_mut() {
                prev.push_str(&text);
            } else if !text.is_empty() {
                out.push(Node::Text(text));
            }
            return;
        }
        NodeData::Element(e) => e,
        _ => return,
    };
    if depth >= MAX_DEPTH {
        let mut text = String::new();
        text_content(node, &mut text);
        return out.push(Node::Text(text));
    }
    let name = &*element.name.local;
    let node = match name {
        "mx-reply" | "script" | "style" | "iframe" | "noscript" | "template" | "object"
        | "embed" | "title" | "head" | "textarea" | "select" => return,
        "b" | "strong" => return out.extend(wrap_inline(children_of(node, depth), &Node::Bold)),
        "i" | "em" | "cite" | "var" => {
            return out.extend(wrap_inline(children_of(node, depth), &Node::Italic));
        }
        "u" | "ins" => return out.extend(wrap_inline(children_of(node, depth), &Node::Underline)),
        "del" | "s" | "strike" => {
            return out.extend(wrap_inline(children_of(node, depth), &Node::Strikethrough));
        }
        "code" | "kbd" | "samp" | "tt" => {
            let mut code = String::new();
            text_content(node, &mut code);
            Node::Code(code)
        }
        "pre" => {
            let mut code = String::new();
            text_content(node, &mut code);
            let language = node
                .children()
                .find(|c| c.as_element().is_some_and(|e| &*e.name.local == "code"))
                .and_then(|c| attr(&c, "class"))
                .and_then(|class| {
                    class
                        .split_whitespace()
                        .find_map(|c| c.strip_prefix("language-").map(str::to_owned))
                });
            Node::CodeBlock { language, code }
        }
        "a" => return parse_link(node, out, depth),
        "span" | "font" => {
            let children = children_of(node, depth);
            if let Some(reason) = attr(node, "data-mx-spoiler") {
                let reason = Some(reason).filter(|r| !r.trim().is_empty());
                let wrap = |children| Node::Spoiler { reason: reason.clone(), children };
                return out.extend(wrap_inline(children, &wrap));
            }
            let fg =
                attr(node, "data-mx-color").or_else(|| attr(node, "color")).and_then(hex_color);
            let bg = attr(node, "data-mx-bg-color").and_then(hex_color);
            if fg.is_none() && bg.is_none() {
                return out.extend(children);
            }
            let wrap = |children| Node::Color { fg: fg.clone(), bg: bg.clone(), children };
            return out.extend(wrap_inline(children, &wrap));
        }
        "br" => {
            if let Some(Node::Text(prev)) = out.last_mut() {
                prev.truncate(prev.trim_end().len());
            }
            Node::LineBreak
        }
        "img" => {
            let alt = attr(node, "alt").or_else(|| attr(node, "title")).unwrap_or_default();
            let src = attr(node, "src").filter(|s| s.starts_with("mxc://"));
            Node::Image { alt, src }
        }
        "p" | "div" | "details" | "summary" | "caption" | "figure" | "figcaption" | "section"
        | "article" | "header" | "footer" | "dl" | "dt" | "dd" | "center" | "address" => {
            let children = block_children(node, depth);
            if children.is_empty() {
                return;
            }
            Node::Paragraph(children)
        }
        "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => Node::Heading {
            level: name.as_bytes()[1] - b'0',
            children: block_children(node, depth),
        },
        "blockquote" => Node::Quote(block_children(node, depth)),
        "ul" | "ol" => {
            let start = (name == "ol").then(|| {
                attr(node, "start").and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(1)
            });
            let mut items = Vec::new();
            for child in node.children() {
                if child.as_element().is_some_and(|e| &*e.name.local == "li") {
                    items.push(block_children(&child, depth + 1));
                } else if child.as_element().is_some() {
                    // Stray content of a list (a nested list outside an item, say) joins the
                    // item before it.
                    let mut stray = Vec::new();
                    parse_node(&child, &mut stray, depth + 1);
                    match items.last_mut() {
                        Some(last) => last.extend(stray),
                        None => items.push(stray),
                    }
                }
            }
            Node::List { start, items }
        }
        "li" => Node::Paragraph(block_children(node, depth)),
        "hr" => Node::Rule,
        "table" => {
            let mut rows = Vec::new();
            collect_rows(node, false, &mut rows, depth);
            Node::Table(rows)
        }
        _ => return out.extend(children_of(node, depth)),
    };
    out.push(node);
}

fn collect_rows(node: &NodeRef, in_head: bool, rows: &mut Vec<TableRow<Vec<Node>>>, depth: usize) {
    for child in node.children() {
        let Some(element) = child.as_element() else { continue };
        match &*element.name.local {
            "thead" => collect_rows(&child, true, rows, depth + 1),
            "tbody" | "tfoot" => collect_rows(&child, false, rows, depth + 1),
            "tr" => {
                let mut header = in_head;
                let mut cells = Vec::new();
                for cell in child.children() {
                    let Some(e) = cell.as_element() else { continue };
                    if matches!(&*e.name.local, "td" | "th") {
                        header |= &*e.name.local == "th" && cells.is_empty();
                        cells.push(block_children(&cell, depth + 2));
                    }
                }
                rows.push(TableRow { header, cells });
            }
            _ => {}
        }
    }
}

fn parse_link(node: &NodeRef, out: &mut Vec<Node>, depth: usize) {
    let children = children_of(node, depth);
    let Some(url) = attr(node, "href") else {
        return out.extend(children);
    };
    let scheme = url.split_once(':').map(|(s, _)| s.trim().to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("https" | "http" | "ftp" | "mailto" | "magnet" | "matrix"))
    {
        // `javascript:`, `data:`, relative links: only their text.
        return out.extend(children);
    }
    let id = if url.starts_with("https://matrix.to/") {
        MatrixToUri::parse(&url).ok().map(|u| u.id().clone())
    } else if url.starts_with("matrix:") {
        MatrixUri::parse(&url).ok().map(|u| u.id().clone())
    } else {
        None
    };
    let wrap = |children| match &id {
        Some(MatrixId::User(user_id)) => Node::UserMention { user_id: user_id.clone(), children },
        Some(MatrixId::Room(room)) => {
            Node::RoomMention { url: url.clone(), room: room.to_string(), children }
        }
        Some(MatrixId::RoomAlias(alias)) => {
            Node::RoomMention { url: url.clone(), room: alias.to_string(), children }
        }
        Some(MatrixId::Event(room, _)) => {
            Node::RoomMention { url: url.clone(), room: room.to_string(), children }
        }
        _ => Node::Link { url: url.clone(), children },
    };
    out.extend(wrap_inline(children, &wrap));
}

/// Wraps inline nodes in `wrap`; blocks among them (which HTML's parser lets a `<b>` or `<a>`
/// hold) get the wrapping pushed inside them instead.
fn wrap_inline(children: Vec<Node>, wrap: &dyn Fn(Vec<Node>) -> Node) -> Vec<Node> {
    if !children.iter().any(Node::is_block) {
        return vec![unnest(wrap(children))];
    }
    let mut out = Vec::new();
    let mut run = Vec::new();
    for child in trim_blocks(children) {
        if child.is_block() {
            if !run.is_empty() {
                out.push(unnest(wrap(std::mem::take(&mut run))));
            }
            out.push(push_into(child, wrap));
        } else {
            run.push(child);
        }
    }
    if !run.is_empty() {
        out.push(unnest(wrap(run)));
    }
    out
}

/// `<b><b>x</b></b>` is `<b>x</b>`.
fn unnest(node: Node) -> Node {
    match node {
        Node::Bold(mut c) if matches!(c.as_slice(), [Node::Bold(_)]) => c.remove(0),
        Node::Italic(mut c) if matches!(c.as_slice(), [Node::Italic(_)]) => c.remove(0),
        Node::Underline(mut c) if matches!(c.as_slice(), [Node::Underline(_)]) => c.remove(0),
        Node::Strikethrough(mut c) if matches!(c.as_slice(), [Node::Strikethrough(_)]) => {
            c.remove(0)
        }
        other => other,
    }
}

fn push_into(block: Node, wrap: &dyn Fn(Vec<Node>) -> Node) -> Node {
    match block {
        Node::Paragraph(c) => Node::Paragraph(wrap_inline(c, wrap)),
        Node::Heading { level, children } => {
            Node::Heading { level, children: wrap_inline(children, wrap) }
        }
        Node::Quote(c) => Node::Quote(wrap_inline(c, wrap)),
        Node::List { start, items } => Node::List {
            start,
            items: items.into_iter().map(|item| wrap_inline(item, wrap)).collect(),
        },
        Node::Table(rows) => Node::Table(
            rows.into_iter()
                .map(|row| TableRow {
                    header: row.header,
                    cells: row.cells.into_iter().map(|c| wrap_inline(c, wrap)).collect(),
                })
                .collect(),
        ),
        other => other,
    }
}

/// Trims the whitespace at one edge of an inline node (inside its wrappers).
fn trim_edge(node: &mut Node, start: bool) {
    match node {
        Node::Text(t) => {
            let trimmed = if start { t.trim_start() } else { t.trim_end() };
            if trimmed.len() != t.len() {
                *t = trimmed.to_owned();
            }
        }
        Node::Bold(c)
        | Node::Italic(c)
        | Node::Underline(c)
        | Node::Strikethrough(c)
        | Node::Link { children: c, .. }
        | Node::UserMention { children: c, .. }
        | Node::RoomMention { children: c, .. }
        | Node::Spoiler { children: c, .. }
        | Node::Color { children: c, .. } => {
            let edge = if start { c.first_mut() } else { c.last_mut() };
            if let Some(edge) = edge {
                trim_edge(edge, start);
            }
        }
        _ => {}
    }
}
