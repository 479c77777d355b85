//! IRC messages: parsing and writing lines with IRCv3 tags, nick case folding, CTCP, and the
//! cutting of long text to the line limit.

use std::fmt::Write as _;

/// The longest line a server reads, its CR LF included and its tags not.
pub(crate) const LINE_LIMIT: usize = 512;

/// One IRC message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Message {
    /// IRCv3 tags, values unescaped (an empty value for a tag without one).
    pub(crate) tags: Vec<(String, String)>,
    /// The source (`nick!user@host` or a server name), without the colon.
    pub(crate) source: Option<String>,
    /// The command, upper case, or a three-digit numeric.
    pub(crate) command: String,
    /// The parameters, the trailing one included.
    pub(crate) params: Vec<String>,
}

impl Message {
    /// A message from us: a command and its parameters.
    pub(crate) fn new(command: &str, params: &[&str]) -> Self {
        Self {
            tags: Vec::new(),
            source: None,
            command: command.to_owned(),
            params: params.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    /// The same message with a tag.
    pub(crate) fn with_tag(mut self, key: &str, value: &str) -> Self {
        self.tags.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Parses a line (without its line ending). `None` for a line without a command.
    pub(crate) fn parse(line: &str) -> Option<Self> {
        let mut rest = line.trim_end_matches(['\r', '\n']);
        let mut tags = Vec::new();
        if let Some(after) = rest.strip_prefix('@') {
            let (raw, tail) = after.split_once(' ')?;
            for tag in raw.split(';').filter(|t| !t.is_empty()) {
                let (key, value) = tag.split_once('=').unwrap_or((tag, ""));
                tags.push((key.to_owned(), unescape_tag(value)));
            }
            rest = tail.trim_start_matches(' ');
        }
        let mut source = None;
        if let Some(after) = rest.strip_prefix(':') {
            let (src, tail) = after.split_once(' ')?;
            source = Some(src.to_owned());
            rest = tail.trim_start_matches(' ');
        }
        let mut params = Vec::new();
        let (command, mut rest) = match rest.split_once(' ') {
            Some((c, r)) => (c, r),
            None => (rest, ""),
        };
        if command.is_empty() {
            return None;
        }
        loop {
            rest = rest.trim_start_matches(' ');
            if rest.is_empty() {
                break;
            }
            if let Some(trailing) = rest.strip_prefix(':') {
                params.push(trailing.to_owned());
                break;
            }
            match rest.split_once(' ') {
                Some((p, r)) => {
                    params.push(p.to_owned());
                    rest = r;
                }
                None => {
                    params.push(rest.to_owned());
                    break;
                }
            }
        }
        Some(Self { tags, source, command: command.to_ascii_uppercase(), params })
    }

    /// The message as a line, without its line ending. Line breaks in parameters become
    /// spaces (a parameter cannot hold them).
    pub(crate) fn to_line(&self) -> String {
        let mut out = String::new();
        if !self.tags.is_empty() {
            out.push('@');
            for (i, (key, value)) in self.tags.iter().enumerate() {
                if i > 0 {
                    out.push(';');
                }
                out.push_str(key);
                if !value.is_empty() {
                    out.push('=');
                    escape_tag(value, &mut out);
                }
            }
            out.push(' ');
        }
        if let Some(source) = &self.source {
            let _ = write!(out, ":{source} ");
        }
        out.push_str(&self.command);
        for (i, param) in self.params.iter().enumerate() {
            let last = i + 1 == self.params.len();
            let param = param.replace(['\r', '\n', '\0'], " ");
            if last && (param.is_empty() || param.contains(' ') || param.starts_with(':')) {
                let _ = write!(out, " :{param}");
            } else {
                let _ = write!(out, " {param}");
            }
        }
        out
    }

    /// A tag's value.
    pub(crate) fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A parameter, or the empty string.
    pub(crate) fn param(&self, i: usize) -> &str {
        self.params.get(i).map_or("", String::as_str)
    }

    /// The nick of the source.
    pub(crate) fn nick(&self) -> &str {
        let source = self.source.as_deref().unwrap_or_default();
        source.split_once('!').map_or(source, |(nick, _)| nick)
    }

    /// The `user@host` of the source, when it has one.
    pub(crate) fn userhost(&self) -> Option<&str> {
        self.source.as_deref()?.split_once('!').map(|(_, uh)| uh)
    }
}

fn unescape_tag(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(':') => out.push(';'),
            Some('s') => out.push(' '),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

fn escape_tag(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            ';' => out.push_str("\\:"),
            ' ' => out.push_str("\\s"),
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A nick or channel name in the `rfc1459` case mapping (what InspIRCd and most networks
/// use): ASCII letters lowered, and `[]\~` as `{}|^`.
pub(crate) fn casefold(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            '[' => '{',
            ']' => '}',
            '\\' => '|',
            '~' => '^',
            c => c,
        })
        .collect()
}

/// Whether a target is a channel.
pub(crate) fn is_channel(target: &str) -> bool {
    target.starts_with(['#', '&', '+', '!'])
}

/// The CTCP command and its argument of a message text, when it is one (`\x01ACTION waves\x01`).
pub(crate) fn ctcp(text: &str) -> Option<(&str, &str)> {
    let inner = text.strip_prefix('\x01')?;
    let inner = inner.strip_suffix('\x01').unwrap_or(inner);
    Some(inner.split_once(' ').unwrap_or((inner, "")))
}

/// Cuts `text` (one line) into pieces of at most `max` bytes, at spaces where it can and
/// never inside a character.
pub(crate) fn split_line(text: &str, max: usize) -> Vec<String> {
    let max = max.max(8);
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        // At the last space in the second half of the piece, if there is one.
        if let Some(space) = rest[..cut].rfind(' ').filter(|&s| s > cut / 2) {
            out.push(rest[..space].to_owned());
            rest = &rest[space + 1..];
        } else {
            out.push(rest[..cut].to_owned());
            rest = &rest[cut..];
        }
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest.to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_tags_source_and_trailing_parse_and_write_back() {
        let line = "@time=2024-01-01T00:00:00.000Z;msgid=a\\sb;+draft/x :nick!u@h PRIVMSG #chan :hello there";
        let m = Message::parse(line).unwrap();
        assert_eq!(m.tag("time"), Some("2024-01-01T00:00:00.000Z"));
        assert_eq!(m.tag("msgid"), Some("a b"));
        assert_eq!(m.tag("+draft/x"), Some(""));
        assert_eq!(m.nick(), "nick");
        assert_eq!(m.userhost(), Some("u@h"));
        assert_eq!(m.command, "PRIVMSG");
        assert_eq!(m.params, ["#chan", "hello there"]);
        assert_eq!(Message::parse(&m.to_line()).unwrap(), m);

        let ping = Message::parse("PING :irc.local").unwrap();
        assert_eq!((ping.command.as_str(), ping.param(0)), ("PING", "irc.local"));
        let cap = Message::parse(":irc.local CAP * LS * :a b=c").unwrap();
        assert_eq!(cap.params, ["*", "LS", "*", "a b=c"]);
        assert!(Message::parse("").is_none());
        assert!(Message::parse("@tags-only").is_none());
    }

    #[test]
    fn parameters_cannot_smuggle_lines() {
        let m = Message::new("PRIVMSG", &["#c", "a\r\nQUIT :x"]);
        assert_eq!(m.to_line(), "PRIVMSG #c :a  QUIT :x");
        assert_eq!(Message::new("JOIN", &["#c"]).to_line(), "JOIN #c");
        assert_eq!(Message::new("PRIVMSG", &["#c", ":)"]).to_line(), "PRIVMSG #c ::)");
        let tagged = Message::new("PRIVMSG", &["#c", "x"]).with_tag("label", "a;b c");
        assert_eq!(tagged.to_line(), "@label=a\\:b\\sc PRIVMSG #c x");
    }

    #[test]
    fn names_fold_by_rfc1459() {
        assert_eq!(casefold("Nick[A]\\~"), "nick{a}|^");
        assert!(is_channel("#x") && !is_channel("x"));
        assert_eq!(ctcp("\x01ACTION waves\x01"), Some(("ACTION", "waves")));
        assert_eq!(ctcp("hi"), None);
    }

    #[test]
    fn long_lines_are_cut_at_spaces_and_characters() {
        let words = "lorem ipsum ".repeat(100);
        let parts = split_line(words.trim_end(), 100);
        assert!(parts.iter().all(|p| p.len() <= 100 && !p.starts_with(' ')));
        assert_eq!(parts.join(" "), words.trim_end());
        let wide = "é".repeat(100);
        let parts = split_line(&wide, 51);
        assert!(parts.iter().all(|p| p.len() <= 51));
        assert_eq!(parts.concat(), wide);
        assert_eq!(split_line("", 10), [""]);
    }
}
