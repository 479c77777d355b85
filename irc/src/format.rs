//! IRC formatting codes ⇄ Matrix HTML, through the framework's format module: IRC text becomes
//! offset entities (bold, italic, underline, strike-through, monospace, colours, mentions) that
//! [`MatrixText::from_entities`] turns into sanitized HTML with pills; Matrix HTML is rendered
//! to IRC codes by [`IrcRender`], a [`Render`] implementation.

use mxbridge::format::{
    Entity, EntityKind, EntityText, MatrixText, MentionLookup, Render, utf16_len,
};
use ruma::UserId;

const BOLD: char = '\x02';
const COLOR: char = '\x03';
const HEX_COLOR: char = '\x04';
const RESET: char = '\x0f';
const MONOSPACE: char = '\x11';
const REVERSE: char = '\x16';
const ITALIC: char = '\x1d';
const STRIKE: char = '\x1e';
const UNDERLINE: char = '\x1f';

/// The 16 standard colours, by code.
const PALETTE: [&str; 16] = [
    "#ffffff", "#000000", "#00007f", "#009300", "#ff0000", "#7f0000", "#9c009c", "#fc7f00",
    "#ffff00", "#00fc00", "#009393", "#00ffff", "#0000fc", "#ff00ff", "#7f7f7f", "#d2d2d2",
];

/// Finds the nicks to make mentions of in plain text: byte ranges and nicks.
pub(crate) type FindMentions<'a> = dyn Fn(&str) -> Vec<(usize, usize, String)> + 'a;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Style {
    bold: bool,
    italic: bool,
    underline: bool,
    strike: bool,
    mono: bool,
    fg: Option<String>,
    bg: Option<String>,
}

/// Where each style started (UTF-16 offsets), while it is on.
#[derive(Debug, Default)]
struct Open {
    bold: Option<usize>,
    italic: Option<usize>,
    underline: Option<usize>,
    strike: Option<usize>,
    mono: Option<usize>,
    color: Option<usize>,
}

/// IRC text with its formatting codes as plain text and entities; `mention` finds the nicks
/// to make mentions of (a byte range in the plain text and the nick).
pub(crate) fn to_entities(text: &str, mention: &FindMentions<'_>) -> EntityText {
    let mut out = EntityText::default();
    let mut style = Style::default();
    let mut open = Open::default();
    let mut chars = text.chars().peekable();
    let mut at = 0usize;
    let push = |out: &mut EntityText, kind: EntityKind, start: usize, end: usize| {
        if end > start {
            out.entities.push(Entity { kind, offset: start, length: end - start });
        }
    };
    // Closes and reopens every style that changed between `old` and `new`.
    let apply = |out: &mut EntityText, open: &mut Open, old: &Style, new: &Style, at: usize| {
        macro_rules! flag {
            ($field:ident, $kind:expr) => {
                if old.$field != new.$field {
                    if let Some(start) = open.$field.take() {
                        push(out, $kind, start, at);
                    }
                    if new.$field {
                        open.$field = Some(at);
                    }
                }
            };
        }
        flag!(bold, EntityKind::Bold);
        flag!(italic, EntityKind::Italic);
        flag!(underline, EntityKind::Underline);
        flag!(strike, EntityKind::Strikethrough);
        flag!(mono, EntityKind::Code);
        if (&old.fg, &old.bg) != (&new.fg, &new.bg) {
            if let Some(start) = open.color.take() {
                push(out, EntityKind::Color { fg: old.fg.clone(), bg: old.bg.clone() }, start, at);
            }
            if new.fg.is_some() || new.bg.is_some() {
                open.color = Some(at);
            }
        }
    };
    while let Some(c) = chars.next() {
        let mut new = style.clone();
        match c {
            BOLD => new.bold = !new.bold,
            ITALIC => new.italic = !new.italic,
            UNDERLINE => new.underline = !new.underline,
            STRIKE => new.strike = !new.strike,
            MONOSPACE => new.mono = !new.mono,
            RESET => new = Style::default(),
            REVERSE => {}
            COLOR => {
                let fg = take_digits(&mut chars);
                let mut bg = None;
                if fg.is_some() && chars.peek() == Some(&',') {
                    let mut ahead = chars.clone();
                    ahead.next();
                    if ahead.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                        bg = take_digits(&mut chars);
                    }
                }
                match fg {
                    None => (new.fg, new.bg) = (None, None),
                    Some(fg) => {
                        new.fg = palette(fg);
                        if let Some(bg) = bg {
                            new.bg = palette(bg);
                        }
                    }
                }
            }
            HEX_COLOR => {
                let fg = take_hex(&mut chars);
                let mut bg = None;
                if fg.is_some() && chars.peek() == Some(&',') {
                    let mut ahead = chars.clone();
                    ahead.next();
                    if take_hex(&mut ahead).is_some() {
                        chars.next();
                        bg = take_hex(&mut chars);
                    }
                }
                match fg {
                    None => (new.fg, new.bg) = (None, None),
                    Some(fg) => {
                        new.fg = Some(fg);
                        if bg.is_some() {
                            new.bg = bg;
                        }
                    }
                }
            }
            c if c.is_control() => continue,
            c => {
                out.text.push(c);
                at += c.len_utf16();
                continue;
            }
        }
        apply(&mut out, &mut open, &style, &new, at);
        style = new;
    }
    apply(&mut out, &mut open, &style, &Style::default(), at);
    for (start, end, nick) in mention(&out.text) {
        let offset = utf16_len(&out.text[..start]);
        let length = utf16_len(&out.text[start..end]);
        out.entities.push(Entity { kind: EntityKind::Mention { user: nick }, offset, length });
    }
    out.entities.sort_by_key(|e| (e.offset, std::cmp::Reverse(e.length)));
    out
}

fn take_digits(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<u8> {
    let mut n: Option<u8> = None;
    for _ in 0..2 {
        match chars.peek() {
            Some(d) if d.is_ascii_digit() => {
                let d = *d as u8 - b'0';
                n = Some(n.unwrap_or(0) * 10 + d);
                chars.next();
            }
            _ => break,
        }
    }
    n
}

fn take_hex(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    let ahead: String = chars.clone().take(6).collect();
    if ahead.len() == 6 && ahead.chars().all(|c| c.is_ascii_hexdigit()) {
        for _ in 0..6 {
            chars.next();
        }
        Some(format!("#{}", ahead.to_ascii_lowercase()))
    } else {
        None
    }
}

fn palette(code: u8) -> Option<String> {
    PALETTE.get(usize::from(code)).map(|c| (*c).to_owned())
}

/// The nearest of the 16 standard colours to `#rrggbb`.
fn nearest_code(hex: &str) -> Option<u8> {
    let rgb = |h: &str| -> Option<(i32, i32, i32)> {
        let h = h.strip_prefix('#')?;
        let v = u32::from_str_radix(h, 16).ok()?;
        Some((((v >> 16) & 255) as i32, ((v >> 8) & 255) as i32, (v & 255) as i32))
    };
    let (r, g, b) = rgb(hex)?;
    (0u8..16).min_by_key(|&i| {
        let (pr, pg, pb) = rgb(PALETTE[usize::from(i)]).unwrap_or_default();
        (pr - r).pow(2) + (pg - g).pow(2) + (pb - b).pow(2)
    })
}

/// IRC text (formatting codes, nicks) as a Matrix message body; `lookup` resolves nicks to
/// the users their pills name.
pub(crate) fn to_matrix(
    text: &str,
    mention: &FindMentions<'_>,
    lookup: &mut impl MentionLookup,
) -> MatrixText {
    MatrixText::from_entities(&to_entities(text, mention), lookup)
}

/// Renders Matrix HTML as IRC text with formatting codes; pills become the nick `nick_of`
/// gives (else their text).
pub(crate) struct IrcRender<'a> {
    /// The IRC nick of a Matrix user (a ghost or a logged-in user).
    pub(crate) nick_of: &'a dyn Fn(&UserId) -> Option<String>,
}

impl std::fmt::Debug for IrcRender<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IrcRender")
    }
}

fn wrap(code: char, inner: String) -> String {
    if inner.is_empty() { inner } else { format!("{code}{inner}{code}") }
}

impl Render for IrcRender<'_> {
    fn text(&mut self, text: &str) -> String {
        // Control characters in Matrix text would read as formatting on IRC.
        text.chars().filter(|c| !c.is_control() || *c == '\n').collect()
    }
    fn bold(&mut self, inner: String) -> String {
        wrap(BOLD, inner)
    }
    fn italic(&mut self, inner: String) -> String {
        wrap(ITALIC, inner)
    }
    fn underline(&mut self, inner: String) -> String {
        wrap(UNDERLINE, inner)
    }
    fn strikethrough(&mut self, inner: String) -> String {
        wrap(STRIKE, inner)
    }
    fn code(&mut self, code: &str) -> String {
        wrap(MONOSPACE, self.text(code))
    }
    fn code_block(&mut self, _language: Option<&str>, code: &str) -> String {
        code.split('\n').map(|l| wrap(MONOSPACE, self.text(l))).collect::<Vec<_>>().join("\n")
    }
    fn color(&mut self, fg: Option<&str>, bg: Option<&str>, inner: String) -> String {
        let fg = fg.and_then(nearest_code);
        let bg = bg.and_then(nearest_code);
        match (fg, bg) {
            (Some(fg), Some(bg)) => format!("{COLOR}{fg:02},{bg:02}{inner}{COLOR}"),
            (Some(fg), None) => format!("{COLOR}{fg:02}{inner}{COLOR}"),
            (None, Some(bg)) => format!("{COLOR}01,{bg:02}{inner}{COLOR}"),
            (None, None) => inner,
        }
    }
    fn user_mention(&mut self, user_id: &UserId, inner: String) -> String {
        match (self.nick_of)(user_id) {
            Some(nick) => nick,
            None if inner.is_empty() => user_id.localpart().to_owned(),
            None => inner,
        }
    }
    fn spoiler(&mut self, _reason: Option<&str>, inner: String) -> String {
        // Black on black: selected to be read.
        format!("{COLOR}01,01{inner}{COLOR}")
    }
}

/// Finds the nicks of `nicks` (case-folded) in `text` as whole words: byte ranges and nicks.
pub(crate) fn find_nicks(
    text: &str,
    is_nick: &dyn Fn(&str) -> bool,
) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let nick_char = |c: char| c.is_ascii_alphanumeric() || "-_[]\\^{}|`".contains(c);
    let mut start = None;
    for (i, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
        if nick_char(c) {
            start.get_or_insert(i);
        } else if let Some(s) = start.take() {
            let word = &text[s..i];
            if is_nick(word) {
                out.push((s, i, word.to_owned()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use mxbridge::format::{Mention, ParsedMessage};
    use ruma::{OwnedUserId, user_id};

    use super::*;

    struct Nicks;
    impl MentionLookup for Nicks {
        fn remote_user(&mut self, nick: &str) -> Option<Mention> {
            (nick == "dave")
                .then(|| Mention::new(user_id!("@irc_dave:localhost").to_owned(), "dave"))
        }
    }

    fn irc(text: &str) -> MatrixText {
        let mention = |t: &str| find_nicks(t, &|w| w == "dave");
        to_matrix(text, &mention, &mut Nicks)
    }

    #[test]
    fn irc_codes_become_html() {
        let m = irc("\x02bold\x02 \x1ditalic\x1d \x1funder\x1f \x1estrike\x1e \x11mono\x11");
        assert_eq!(m.body, "bold italic under strike mono");
        assert_eq!(
            m.html.as_deref(),
            Some(
                "<strong>bold</strong> <em>italic</em> <u>under</u> <del>strike</del> <code>mono</code>"
            )
        );
        let m = irc("\x0304red\x03 \x0302,08blue on yellow\x0f \x04ff8000orange");
        assert_eq!(m.body, "red blue on yellow orange");
        assert_eq!(
            m.html.as_deref(),
            Some(
                "<span data-mx-color=\"#ff0000\">red</span> <span data-mx-bg-color=\"#ffff00\" \
                 data-mx-color=\"#00007f\">blue on yellow</span> <span data-mx-color=\"#ff8000\">orange</span>"
            )
        );
        // What the sanitizer keeps as it is.
        let html = m.html.unwrap();
        assert_eq!(mxbridge::format::sanitize_html(&html), html);
        // Bold reset by ^O, a colour code with no digits ends the colour.
        assert_eq!(irc("\x02a\x0fb").html.as_deref(), Some("<strong>a</strong>b"));
        assert_eq!(irc("\x0312a\x03b").body, "ab");
        assert_eq!(irc("plain").html, None);
        assert_eq!(irc("5,3 stays").body, "5,3 stays");
    }

    #[test]
    fn nicks_become_pills() {
        let m = irc("dave: look, dave2 is not dave");
        let dave: OwnedUserId = user_id!("@irc_dave:localhost").to_owned();
        assert_eq!(m.mentions.iter().collect::<Vec<_>>(), [&dave]);
        let html = m.html.unwrap();
        assert_eq!(html.matches("https://matrix.to/#/@irc_dave:localhost").count(), 2, "{html}");
        assert!(html.contains("dave2"));
    }

    #[test]
    fn matrix_html_becomes_irc_codes() {
        let nick_of = |u: &UserId| (u.localpart() == "irc_dave").then(|| "Dave".to_owned());
        let mut r = IrcRender { nick_of: &nick_of };
        let parsed = ParsedMessage::from_html(
            "<b>b</b> <i>i</i> <u>u</u> <del>s</del> <code>c</code> \
             <font data-mx-color=\"#ff0000\">red</font> \
             <a href=\"https://matrix.to/#/@irc_dave:localhost\">dave (IRC)</a>: hi",
        );
        assert_eq!(
            parsed.render(&mut r),
            "\x02b\x02 \x1di\x1d \x1fu\x1f \x1es\x1e \x11c\x11 \x0304red\x03 Dave: hi"
        );
        // Round trip of the codes.
        let back = irc(&parsed.render(&mut r));
        assert!(back.html.unwrap().starts_with("<strong>b</strong> <em>i</em>"));
    }
}
