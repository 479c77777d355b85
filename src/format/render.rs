//! Rendering a parsed Matrix message to a network's syntax through hooks.

use ruma::UserId;

use super::tree::{Node, ParsedMessage, TableRow};

/// How a network writes each construct. Every hook has a default that yields plain text, so a
/// bridge overrides only what its network has. Inline hooks get their content already rendered
/// (`inner`); block hooks return their lines without a trailing line break, and
/// [`block_separator`](Render::block_separator) goes between blocks.
pub trait Render {
    /// Plain text (escape here what the network would read as markup).
    fn text(&mut self, text: &str) -> String {
        text.to_owned()
    }
    /// Bold.
    fn bold(&mut self, inner: String) -> String {
        inner
    }
    /// Italic.
    fn italic(&mut self, inner: String) -> String {
        inner
    }
    /// Underlined.
    fn underline(&mut self, inner: String) -> String {
        inner
    }
    /// Struck through.
    fn strikethrough(&mut self, inner: String) -> String {
        inner
    }
    /// Inline code, verbatim.
    fn code(&mut self, code: &str) -> String {
        code.to_owned()
    }
    /// A code block, verbatim (its final line break removed).
    fn code_block(&mut self, language: Option<&str>, code: &str) -> String {
        let _ = language;
        code.to_owned()
    }
    /// A link: the text, then the URL in brackets when they differ.
    fn link(&mut self, url: &str, inner: String) -> String {
        if inner.is_empty() || inner == url || url.strip_prefix("mailto:") == Some(&inner) {
            url.to_owned()
        } else {
            format!("{inner} ({url})")
        }
    }
    /// A pill for a Matrix user: `inner` is its text (usually the display name). A bridge
    /// returns its network's mention of the remote user behind a ghost here.
    fn user_mention(&mut self, user_id: &UserId, inner: String) -> String {
        if inner.is_empty() { user_id.to_string() } else { inner }
    }
    /// A link to a room or to an event in one (`room` is the room's ID or alias): the room
    /// when the text is just that, else as [`link`](Render::link).
    fn room_mention(&mut self, room: &str, url: &str, inner: String) -> String {
        if inner.is_empty() || inner == room { room.to_owned() } else { self.link(url, inner) }
    }
    /// Coloured text (`fg` the text colour, `bg` the background, each `#rrggbb`).
    fn color(&mut self, fg: Option<&str>, bg: Option<&str>, inner: String) -> String {
        let _ = (fg, bg);
        inner
    }
    /// A spoiler.
    fn spoiler(&mut self, reason: Option<&str>, inner: String) -> String {
        let _ = reason;
        inner
    }
    /// A block quote: every line behind `> `.
    fn quote(&mut self, inner: String) -> String {
        prefix_lines(&inner, "> ", ">")
    }
    /// One list item: `number` is `None` in a bulleted list. `inner` may hold several lines (a
    /// nested list); the default indents them under the marker.
    fn list_item(&mut self, number: Option<u64>, inner: String) -> String {
        let marker = match number {
            Some(n) => format!("{n}. "),
            None => "• ".to_owned(),
        };
        hang(&marker, &inner)
    }
    /// A line break inside a paragraph.
    fn line_break(&mut self) -> String {
        "\n".to_owned()
    }
    /// A paragraph.
    fn paragraph(&mut self, inner: String) -> String {
        inner
    }
    /// A heading (`level` 1 to 6).
    fn heading(&mut self, level: u8, inner: String) -> String {
        let _ = level;
        inner
    }
    /// A thematic break.
    fn rule(&mut self) -> String {
        "———".to_owned()
    }
    /// An inline image: its alternative text.
    fn image(&mut self, alt: &str, src: Option<&str>) -> String {
        let _ = src;
        alt.to_owned()
    }
    /// A table, its cells already rendered: one line per row, cells between ` | `.
    fn table(&mut self, rows: Vec<TableRow<String>>) -> String {
        rows.iter()
            .map(|row| {
                row.cells.iter().map(|c| c.replace('\n', " ")).collect::<Vec<_>>().join(" | ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
    /// What separates two blocks (a paragraph and a list, say).
    fn block_separator(&self) -> &str {
        "\n"
    }
}

/// `text` with `prefix` before each line (`empty` before the empty ones).
pub fn prefix_lines(text: &str, prefix: &str, empty: &str) -> String {
    text.split('\n')
        .map(|line| if line.is_empty() { empty.to_owned() } else { format!("{prefix}{line}") })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` behind `marker`, its further lines indented by the marker's width.
pub fn hang(marker: &str, text: &str) -> String {
    let indent = " ".repeat(marker.chars().count());
    let mut out = String::from(marker);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
            if !line.is_empty() {
                out.push_str(&indent);
            }
        }
        out.push_str(line);
    }
    out
}

impl ParsedMessage {
    /// The message in a network's syntax.
    pub fn render(&self, renderer: &mut (impl Render + ?Sized)) -> String {
        render_nodes(&self.nodes, renderer)
    }

    /// The message as plain text, pills as their text.
    pub fn to_plain(&self) -> String {
        self.render(&mut PlainText)
    }

    /// The message as chat Markdown ([`Markdown`]), pills as their text.
    pub fn to_markdown(&self) -> String {
        self.render(&mut Markdown::default())
    }
}

/// Renders a sequence of nodes: inline runs joined, blocks on lines of their own.
pub fn render_nodes(nodes: &[Node], r: &mut (impl Render + ?Sized)) -> String {
    render_seq(nodes, r, false)
}

/// `in_item`: a list item's content, where a nested list follows its text on the next line.
fn render_seq(nodes: &[Node], r: &mut (impl Render + ?Sized), in_item: bool) -> String {
    let mut out = String::new();
    let mut last_block = false;
    let mut last_list = false;
    for node in nodes {
        let block = node.is_block();
        let list = matches!(node, Node::List { .. });
        let piece = render_node(node, r);
        if block && piece.is_empty() {
            continue;
        }
        if !out.is_empty() && (block || last_block) {
            if block && out.ends_with('\n') {
                // A line break right before a block is the break between them.
                out.pop();
            }
            if in_item && (list || last_list) {
                out.push('\n');
            } else {
                out.push_str(r.block_separator());
            }
        }
        out.push_str(&piece);
        last_block = block;
        last_list = list;
    }
    out
}

fn render_node(node: &Node, r: &mut (impl Render + ?Sized)) -> String {
    match node {
        Node::Text(t) => r.text(t),
        Node::Bold(c) => {
            let inner = render_nodes(c, r);
            r.bold(inner)
        }
        Node::Italic(c) => {
            let inner = render_nodes(c, r);
            r.italic(inner)
        }
        Node::Underline(c) => {
            let inner = render_nodes(c, r);
            r.underline(inner)
        }
        Node::Strikethrough(c) => {
            let inner = render_nodes(c, r);
            r.strikethrough(inner)
        }
        Node::Code(code) => r.code(code),
        Node::Link { url, children } => {
            let inner = render_nodes(children, r);
            r.link(url, inner)
        }
        Node::UserMention { user_id, children } => {
            let inner = render_nodes(children, r);
            r.user_mention(user_id, inner)
        }
        Node::RoomMention { url, room, children } => {
            let inner = render_nodes(children, r);
            r.room_mention(room, url, inner)
        }
        Node::Spoiler { reason, children } => {
            let inner = render_nodes(children, r);
            r.spoiler(reason.as_deref(), inner)
        }
        Node::Color { fg, bg, children } => {
            let inner = render_nodes(children, r);
            r.color(fg.as_deref(), bg.as_deref(), inner)
        }
        Node::LineBreak => r.line_break(),
        Node::Image { alt, src } => r.image(alt, src.as_deref()),
        Node::Paragraph(c) => {
            let inner = render_nodes(c, r);
            r.paragraph(inner)
        }
        Node::Heading { level, children } => {
            let inner = render_nodes(children, r);
            r.heading(*level, inner)
        }
        Node::Quote(c) => {
            let inner = render_nodes(c, r);
            r.quote(inner)
        }
        Node::CodeBlock { language, code } => {
            r.code_block(language.as_deref(), code.strip_suffix('\n').unwrap_or(code))
        }
        Node::List { start, items } => {
            let mut lines = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let inner = render_seq(item, r, true);
                let number = start.map(|s| s.saturating_add(i as u64));
                lines.push(r.list_item(number, inner));
            }
            lines.join("\n")
        }
        Node::Rule => r.rule(),
        Node::Table(rows) => {
            let rows = rows
                .iter()
                .map(|row| TableRow {
                    header: row.header,
                    cells: row.cells.iter().map(|c| render_nodes(c, r)).collect(),
                })
                .collect();
            r.table(rows)
        }
    }
}

/// Plain text: formatting dropped, links as `text (url)`, lists with `•` and numbers, quotes
/// behind `> `, blocks on lines of their own.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainText;

impl Render for PlainText {}

/// The mention hook of the ready renderers: the Matrix user and the pill's text in, the
/// network's mention out (`None` keeps the text).
pub type MentionHook<'a> = Box<dyn FnMut(&UserId, &str) -> Option<String> + Send + 'a>;

/// Chat Markdown, as Discord, Slack-like and Mattermost-like networks read it: `**bold**`,
/// `*italic*`, `__underline__`, `~~strike~~`, `` `code` ``, fenced code blocks, `[text](url)`,
/// `||spoiler||`, `> ` quotes, `-` and `1.` lists, `#` headings and pipe tables. Line breaks
/// are plain newlines. Markup characters in text are escaped with `\`.
pub struct Markdown<'a> {
    mention: Option<MentionHook<'a>>,
    /// Whether the next text starts a line (where `#`, `>`, `-` and `1.` are markup).
    line_start: bool,
}

impl Default for Markdown<'_> {
    fn default() -> Self {
        Self { mention: None, line_start: true }
    }
}

impl std::fmt::Debug for Markdown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Markdown").field("mention", &self.mention.is_some()).finish()
    }
}

impl<'a> Markdown<'a> {
    /// Markdown whose user mentions go through `hook` (for example `<@123>` for the remote user
    /// behind a ghost); `None` from it keeps the pill's text.
    pub fn with_mentions(hook: impl FnMut(&UserId, &str) -> Option<String> + Send + 'a) -> Self {
        Self { mention: Some(Box::new(hook)), line_start: true }
    }
}

/// `text` with Markdown's inline markup characters escaped (`&` only where it would start a
/// character reference).
pub fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        let escape = match c {
            '\\' | '*' | '_' | '~' | '`' | '|' | '[' | ']' | '<' => true,
            '&' => starts_reference(&text[i + 1..]),
            _ => false,
        };
        if escape {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether `rest` (what follows a `&`) makes it a character reference such as `&amp;`.
fn starts_reference(rest: &str) -> bool {
    let name = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '#')).unwrap_or(rest.len());
    name > 0 && rest[name..].starts_with(';')
}

/// Escapes what would start a block at the beginning of a line: `#` and `>`, and the `-`, `+`
/// or `1.` of a list item.
fn escape_line_start(text: String) -> String {
    let body = text.trim_start_matches(' ');
    let indent = text.len() - body.len();
    let followed_by_space = |at: usize| body[at..].chars().next().is_none_or(char::is_whitespace);
    let at = match body.chars().next() {
        Some('#' | '>') => Some(0),
        Some('-' | '+' | '=') if followed_by_space(1) => Some(0),
        Some(c) if c.is_ascii_digit() => {
            let digits = body.find(|c: char| !c.is_ascii_digit()).unwrap_or(body.len());
            (body[digits..].starts_with(['.', ')']) && followed_by_space(digits + 1))
                .then_some(digits)
        }
        _ => None,
    };
    match at {
        Some(at) => format!("{}\\{}", &text[..indent + at], &text[indent + at..]),
        None => text,
    }
}

fn fence_for(code: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in code.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    "`".repeat((longest + 1).max(3))
}

impl Markdown<'_> {
    /// Ends a block: what comes next starts a line.
    fn block(&mut self, block: String) -> String {
        self.line_start = true;
        block
    }
}

impl Render for Markdown<'_> {
    fn text(&mut self, text: &str) -> String {
        let escaped = escape_markdown(text);
        if std::mem::take(&mut self.line_start) { escape_line_start(escaped) } else { escaped }
    }
    fn line_break(&mut self) -> String {
        self.line_start = true;
        "\n".to_owned()
    }
    fn paragraph(&mut self, inner: String) -> String {
        self.block(inner)
    }
    fn quote(&mut self, inner: String) -> String {
        self.block(prefix_lines(&inner, "> ", ">"))
    }
    fn bold(&mut self, inner: String) -> String {
        wrap("**", inner)
    }
    fn italic(&mut self, inner: String) -> String {
        wrap("*", inner)
    }
    fn underline(&mut self, inner: String) -> String {
        wrap("__", inner)
    }
    fn strikethrough(&mut self, inner: String) -> String {
        wrap("~~", inner)
    }
    fn code(&mut self, code: &str) -> String {
        self.line_start = false;
        if code.is_empty() {
            return String::new();
        }
        let ticks = if code.contains('`') { "``" } else { "`" };
        let pad = if code.starts_with('`') || code.ends_with('`') { " " } else { "" };
        format!("{ticks}{pad}{code}{pad}{ticks}")
    }
    fn code_block(&mut self, language: Option<&str>, code: &str) -> String {
        let fence = fence_for(code);
        let language: String = language
            .unwrap_or("")
            .chars()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '+' | '#' | '.'))
            .collect();
        self.block(format!("{fence}{language}\n{code}\n{fence}"))
    }
    fn link(&mut self, url: &str, inner: String) -> String {
        if inner.is_empty() || inner == escape_markdown(url) {
            return url.to_owned();
        }
        let url = url.replace('(', "%28").replace(')', "%29").replace(' ', "%20");
        format!("[{inner}]({url})")
    }
    fn user_mention(&mut self, user_id: &UserId, inner: String) -> String {
        let text = if inner.is_empty() { escape_markdown(user_id.as_str()) } else { inner };
        match &mut self.mention {
            Some(hook) => hook(user_id, &text).unwrap_or(text),
            None => text,
        }
    }
    fn room_mention(&mut self, _room: &str, url: &str, inner: String) -> String {
        self.link(url, inner)
    }
    fn spoiler(&mut self, _reason: Option<&str>, inner: String) -> String {
        wrap("||", inner)
    }
    fn image(&mut self, alt: &str, _src: Option<&str>) -> String {
        self.line_start = false;
        escape_markdown(alt)
    }
    fn list_item(&mut self, number: Option<u64>, inner: String) -> String {
        let marker = match number {
            Some(n) => format!("{n}. "),
            None => "- ".to_owned(),
        };
        self.block(hang(&marker, &inner))
    }
    fn heading(&mut self, level: u8, inner: String) -> String {
        let hashes = "#".repeat(level.clamp(1, 6) as usize);
        self.block(format!("{hashes} {}", inner.replace('\n', " ")))
    }
    fn rule(&mut self) -> String {
        self.block("---".to_owned())
    }
    fn table(&mut self, rows: Vec<TableRow<String>>) -> String {
        let width = rows.iter().map(|r| r.cells.len()).max().unwrap_or(0);
        if width == 0 {
            return String::new();
        }
        let line = |cells: &[String]| {
            let mut cells: Vec<String> = cells.iter().map(|c| c.replace('\n', " ")).collect();
            cells.resize(width, String::new());
            format!("| {} |", cells.join(" | "))
        };
        let mut lines = Vec::new();
        let mut rows = rows.into_iter().peekable();
        // Markdown tables need exactly one header row: the first.
        let head = rows.next().map(|r| r.cells).unwrap_or_default();
        lines.push(line(&head));
        lines.push(format!("|{}", " --- |".repeat(width)));
        for row in rows {
            lines.push(line(&row.cells));
        }
        self.block(lines.join("\n"))
    }
    fn block_separator(&self) -> &str {
        "\n\n"
    }
}

/// `inner` between `mark`s, with the spaces at its edges moved outside (Markdown does not
/// accept `** bold**`).
fn wrap(mark: &str, inner: String) -> String {
    let trimmed = inner.trim();
    if trimmed.is_empty() {
        return inner;
    }
    let start = inner.len() - inner.trim_start().len();
    let end = inner.trim_end().len();
    format!("{}{mark}{trimmed}{mark}{}", &inner[..start], &inner[end..])
}
