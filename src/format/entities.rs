//! The offset-entities form: text plus formatting ranges counted in UTF-16 code units, as
//! Telegram's API (and others built on JavaScript strings) exchange them.

use ruma::UserId;

use super::{
    render::Render,
    tree::{ParsedMessage, TableRow},
};

/// Text and the formatting over it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntityText {
    /// The text, without markup.
    pub text: String,
    /// The formatted ranges, by offset (outer before inner at the same offset).
    pub entities: Vec<Entity>,
}

/// One formatted range of an [`EntityText`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    /// What the range is.
    pub kind: EntityKind,
    /// Where it starts, in UTF-16 code units from the start of the text.
    pub offset: usize,
    /// How long it is, in UTF-16 code units.
    pub length: usize,
}

/// What an [`Entity`] marks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntityKind {
    /// Bold.
    Bold,
    /// Italic.
    Italic,
    /// Underlined.
    Underline,
    /// Struck through.
    Strikethrough,
    /// Hidden until clicked.
    Spoiler,
    /// Inline code.
    Code,
    /// A code block.
    Pre {
        /// Its language, if given.
        language: Option<String>,
    },
    /// Text that links to `url`.
    TextLink {
        /// The target.
        url: String,
    },
    /// Text that is itself a URL.
    Url,
    /// A mention of a remote user.
    Mention {
        /// The remote user's ID (or name, as the network wants it).
        user: String,
    },
    /// A quoted block.
    Blockquote,
    /// Coloured text; each colour is `#rrggbb` (others are dropped).
    Color {
        /// The text colour.
        fg: Option<String>,
        /// The background colour.
        bg: Option<String>,
    },
}

impl EntityText {
    /// Plain text without entities.
    pub fn plain(text: impl Into<String>) -> Self {
        Self { text: text.into(), entities: Vec::new() }
    }

    /// Adds an entity over the UTF-16 range `offset..offset + length`.
    pub fn with(mut self, kind: EntityKind, offset: usize, length: usize) -> Self {
        self.entities.push(Entity { kind, offset, length });
        self
    }

    /// The text an entity covers (its range rounded outwards to whole characters).
    pub fn slice(&self, entity: &Entity) -> &str {
        let start = utf16_to_byte(&self.text, entity.offset, false);
        let end = utf16_to_byte(&self.text, entity.offset.saturating_add(entity.length), true);
        &self.text[start..end.max(start)]
    }
}

/// The length of `text` in UTF-16 code units.
pub fn utf16_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// The byte index of UTF-16 offset `offset` in `text`, clamped to its length. An offset inside
/// a surrogate pair moves back to the character's start, or on to its end when `up`.
pub(super) fn utf16_to_byte(text: &str, offset: usize, up: bool) -> usize {
    let mut units = 0;
    for (byte, c) in text.char_indices() {
        if units >= offset {
            return byte;
        }
        let next = units + c.len_utf16();
        if next > offset {
            return if up { byte + c.len_utf8() } else { byte };
        }
        units = next;
    }
    text.len()
}

// Entities are opened and closed by characters from the supplementary private use areas while
// rendering, so that the layout (list markers, separators) is the plain renderer's; the markers
// leave the text at the end. Text is cleared of such characters first.
const OPEN: u32 = 0xF0000;
const CLOSE: u32 = 0x100000;
const MAX_ENTITIES: usize = 0xFFFE;

fn is_marker(c: char) -> bool {
    (c as u32) >= OPEN
}

fn clean(text: &str) -> String {
    if text.chars().any(is_marker) {
        text.chars().map(|c| if is_marker(c) { '\u{FFFD}' } else { c }).collect()
    } else {
        text.to_owned()
    }
}

struct EntityRenderer<F> {
    kinds: Vec<EntityKind>,
    mention: F,
}

impl<F> EntityRenderer<F> {
    fn mark(&mut self, kind: EntityKind, inner: String) -> String {
        let id = self.kinds.len();
        if inner.is_empty() || id >= MAX_ENTITIES {
            return inner;
        }
        self.kinds.push(kind);
        let id = id as u32;
        let open = char::from_u32(OPEN + id).unwrap_or('\u{FFFD}');
        let close = char::from_u32(CLOSE + id).unwrap_or('\u{FFFD}');
        format!("{open}{inner}{close}")
    }

    fn finish(self, marked: &str) -> EntityText {
        let mut text = String::with_capacity(marked.len());
        let mut starts = vec![0; self.kinds.len()];
        let mut found = Vec::new();
        let mut units = 0;
        for c in marked.chars() {
            let code = c as u32;
            if code >= CLOSE {
                let id = (code - CLOSE) as usize;
                found.push((starts[id], units - starts[id], id));
            } else if code >= OPEN {
                starts[(code - OPEN) as usize] = units;
            } else {
                units += c.len_utf16();
                text.push(c);
            }
        }
        // Outer before inner: an element's entity is made after those inside it, so on equal
        // ranges the later one is the outer.
        found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
        let entities = found
            .into_iter()
            .filter(|(_, length, _)| *length > 0)
            .map(|(offset, length, id)| Entity { kind: self.kinds[id].clone(), offset, length })
            .collect();
        EntityText { text, entities }
    }
}

impl<F: FnMut(&UserId, &str) -> Option<String>> Render for EntityRenderer<F> {
    fn text(&mut self, text: &str) -> String {
        clean(text)
    }
    fn bold(&mut self, inner: String) -> String {
        self.mark(EntityKind::Bold, inner)
    }
    fn italic(&mut self, inner: String) -> String {
        self.mark(EntityKind::Italic, inner)
    }
    fn underline(&mut self, inner: String) -> String {
        self.mark(EntityKind::Underline, inner)
    }
    fn strikethrough(&mut self, inner: String) -> String {
        self.mark(EntityKind::Strikethrough, inner)
    }
    fn code(&mut self, code: &str) -> String {
        self.mark(EntityKind::Code, clean(code))
    }
    fn code_block(&mut self, language: Option<&str>, code: &str) -> String {
        self.mark(EntityKind::Pre { language: language.map(clean) }, clean(code))
    }
    fn link(&mut self, url: &str, inner: String) -> String {
        if inner.is_empty() {
            return clean(url);
        }
        self.mark(EntityKind::TextLink { url: clean(url) }, inner)
    }
    fn user_mention(&mut self, user_id: &UserId, inner: String) -> String {
        let inner = if inner.is_empty() { user_id.to_string() } else { inner };
        match (self.mention)(user_id, &inner) {
            Some(user) => self.mark(EntityKind::Mention { user }, inner),
            None => inner,
        }
    }
    fn room_mention(&mut self, room: &str, url: &str, inner: String) -> String {
        let inner = if inner.is_empty() { clean(room) } else { inner };
        self.mark(EntityKind::TextLink { url: clean(url) }, inner)
    }
    fn spoiler(&mut self, _reason: Option<&str>, inner: String) -> String {
        self.mark(EntityKind::Spoiler, inner)
    }
    fn color(&mut self, fg: Option<&str>, bg: Option<&str>, inner: String) -> String {
        let (fg, bg) = (fg.map(str::to_owned), bg.map(str::to_owned));
        self.mark(EntityKind::Color { fg, bg }, inner)
    }
    fn quote(&mut self, inner: String) -> String {
        self.mark(EntityKind::Blockquote, inner)
    }
    fn heading(&mut self, _level: u8, inner: String) -> String {
        self.mark(EntityKind::Bold, inner)
    }
    fn image(&mut self, alt: &str, _src: Option<&str>) -> String {
        clean(alt)
    }
    fn table(&mut self, rows: Vec<TableRow<String>>) -> String {
        let rows = rows
            .into_iter()
            .map(|row| {
                let header = row.header;
                let line = row.cells.iter().map(|c| c.replace('\n', " ")).collect::<Vec<_>>();
                let line = line.join(" | ");
                if header { self.mark(EntityKind::Bold, line) } else { line }
            })
            .collect::<Vec<_>>();
        rows.join("\n")
    }
}

impl ParsedMessage {
    /// The message as text and entities, laid out as [`to_plain`](Self::to_plain) lays it out.
    /// `mention` gets each pill's Matrix user and text and returns the remote user to mention,
    /// or `None` to leave the text unmarked (a Matrix user with no one behind it remotely).
    pub fn to_entities(&self, mention: impl FnMut(&UserId, &str) -> Option<String>) -> EntityText {
        let mut renderer = EntityRenderer { kinds: Vec::new(), mention };
        let marked = self.render(&mut renderer);
        renderer.finish(&marked)
    }
}
