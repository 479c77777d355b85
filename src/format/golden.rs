//! Golden files: every corpus message through every renderer, and back to HTML.
//!
//! `src/format/golden/*.html` is Matrix HTML as clients send it; next to each, `.txt` (plain),
//! `.md` (Markdown), `.entities` (text and entities), `.md.html` (that Markdown read back as a
//! network's) and `.entities.html` (those entities read back). `src/format/golden/remote/*.md`
//! is Markdown as networks send it; next to each, `.html`. `MXB_BLESS=1` rewrites the outputs.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use regex::Regex;
use ruma::{UserId, user_id};

use super::*;

const SERVER: &str = "example.org";

/// Ghosts are `@_remote_<id>:example.org`; the remote side knows them by `<id>`.
fn remote_of(user: &UserId) -> Option<String> {
    let local = user.localpart().strip_prefix("_remote_")?;
    (user.server_name() == SERVER).then(|| local.to_owned())
}

fn ghost(remote: &str) -> Option<Mention> {
    let name = match remote {
        "42" => "Alice",
        "43" => "بشير",
        "44" => "Zoë 🦊",
        _ => return None,
    };
    let user_id = UserId::parse(format!("@_remote_{remote}:{SERVER}")).ok()?;
    Some(Mention::new(user_id, name))
}

fn mention_pattern() -> Regex {
    Regex::new(r"<@(\w+)>").expect("pattern")
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/format/golden")
}

struct Golden {
    bless: bool,
    failures: Vec<String>,
}

impl Golden {
    fn check(&mut self, path: &Path, actual: &str) {
        let expected = fs::read_to_string(path).ok();
        if expected.as_deref() == Some(actual) {
            return;
        }
        if self.bless {
            fs::write(path, actual).expect("write golden file");
        } else {
            self.failures.push(format!(
                "{}:\n--- expected\n{}\n--- actual\n{actual}\n",
                path.display(),
                expected.as_deref().unwrap_or("(missing)")
            ));
        }
    }
}

/// The HTML a client would show: the formatted body, or the escaped plain one.
fn html_of(text: &MatrixText) -> String {
    let escaped = || super::to_matrix::escape_text(&text.body).replace('\n', "<br>");
    text.html.clone().unwrap_or_else(escaped)
}

fn assert_sanitized(what: &str, html: &str) {
    assert_eq!(sanitize_html(html), html, "{what}: the sanitizer changed the output");
}

/// Each entity's UTF-16 range, cut from the UTF-16 encoding, is whole characters and is the
/// text the entity covers.
fn assert_utf16(what: &str, e: &EntityText) {
    let units: Vec<u16> = e.text.encode_utf16().collect();
    for entity in &e.entities {
        let range = units.get(entity.offset..entity.offset + entity.length);
        let range = range.unwrap_or_else(|| panic!("{what}: {entity:?} is past the end"));
        let cut = String::from_utf16(range)
            .unwrap_or_else(|_| panic!("{what}: {entity:?} splits a surrogate pair"));
        assert_eq!(cut, e.slice(entity), "{what}: {entity:?}");
    }
}

pub(super) fn describe_entities(e: &EntityText) -> String {
    let mut out = format!("{}\n----\n", e.text);
    for entity in &e.entities {
        let _ = writeln!(
            out,
            "{:?} @{}+{}: {:?}",
            entity.kind,
            entity.offset,
            entity.length,
            e.slice(entity)
        );
    }
    out
}

fn sorted_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("golden directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.ends_with(ext) && n.len() > ext.len() && !n[..n.len() - ext.len()].contains('.')
            })
        })
        .collect();
    files.sort();
    files
}

#[test]
fn golden_files() {
    let mut golden =
        Golden { bless: std::env::var_os("MXB_BLESS").is_some_and(|v| v == "1"), failures: vec![] };
    let pattern = mention_pattern();

    let corpus = sorted_files(&dir(), ".html");
    assert!(corpus.len() >= 10, "the corpus is missing");
    for input in &corpus {
        let name = input.display().to_string();
        let html = fs::read_to_string(input).expect("read corpus");
        let message = ParsedMessage::from_html(&html);
        let stem = input.with_extension("");

        golden.check(&stem.with_extension("txt"), &(message.to_plain() + "\n"));

        let mut markdown =
            Markdown::with_mentions(|user, _| remote_of(user).map(|id| format!("<@{id}>")));
        let md = message.render(&mut markdown);
        golden.check(&stem.with_extension("md"), &(md.clone() + "\n"));

        let entities = message.to_entities(|user, _| remote_of(user));
        assert_utf16(&name, &entities);
        golden.check(&stem.with_extension("entities"), &describe_entities(&entities));

        let mut lookup = PatternMentions::new(&pattern, ghost);
        let back = MatrixText::from_markdown(&md, &mut lookup);
        let back_html = html_of(&back);
        assert_sanitized(&format!("{name} via Markdown"), &back_html);
        golden.check(&stem.with_extension("md.html"), &(back_html + "\n"));

        let back = MatrixText::from_entities(&entities, &mut lookup);
        let back_html = html_of(&back);
        assert_sanitized(&format!("{name} via entities"), &back_html);
        golden.check(&stem.with_extension("entities.html"), &(back_html + "\n"));
    }

    let remote = sorted_files(&dir().join("remote"), ".md");
    assert!(remote.len() >= 4, "the remote corpus is missing");
    for input in &remote {
        let markdown = fs::read_to_string(input).expect("read remote corpus");
        let mut lookup = PatternMentions::new(&pattern, ghost);
        let text = MatrixText::from_markdown(markdown.trim_end_matches('\n'), &mut lookup);
        let html = text.html.clone().unwrap_or_default();
        assert_sanitized(&input.display().to_string(), &html);
        let mentions: Vec<&str> = text.mentions.iter().map(|u| u.as_str()).collect();
        let out = format!("{html}\n----\n{}\n----\n{}\n", text.body, mentions.join("\n"));
        golden.check(&input.with_extension("html"), &out);
    }

    assert!(golden.failures.is_empty(), "{}", golden.failures.join("\n"));
}

#[test]
fn entity_offsets_count_utf16_units_on_emoji_and_rtl() {
    let message = ParsedMessage::from_html(
        "👨‍👩‍👧 <b>שלום</b> 🇫🇷<i>x</i> <a href=\"https://matrix.to/#/@_remote_43:example.org\">بشير</a>",
    );
    let e = message.to_entities(|user, _| remote_of(user));
    assert_eq!(e.text, "👨‍👩‍👧 שלום 🇫🇷x بشير");
    // The family is 8 UTF-16 units (three surrogate pairs, two joiners), the flag 4.
    let want = [
        (EntityKind::Bold, 9, 4, "שלום"),
        (EntityKind::Italic, 18, 1, "x"),
        (EntityKind::Mention { user: "43".to_owned() }, 20, 4, "بشير"),
    ];
    assert_eq!(e.entities.len(), want.len());
    for (entity, (kind, offset, length, text)) in e.entities.iter().zip(want) {
        assert_eq!((&entity.kind, entity.offset, entity.length), (&kind, offset, length));
        assert_eq!(e.slice(entity), text);
    }
    assert_utf16("emoji and RTL", &e);
}

#[test]
fn entities_in_become_nested_html_with_pills() {
    // Overlapping ranges, one past the end, one splitting an emoji.
    let input = EntityText::plain("bold both italic 🦊 <@42>")
        .with(EntityKind::Bold, 0, 9)
        .with(EntityKind::Italic, 5, 11)
        .with(EntityKind::Code, 18, 1)
        .with(EntityKind::Mention { user: "42".to_owned() }, 20, 100)
        .with(EntityKind::TextLink { url: "javascript:alert(1)".to_owned() }, 0, 4);
    let pattern = mention_pattern();
    let text = MatrixText::from_entities(&input, &mut PatternMentions::new(&pattern, ghost));
    let html = text.html.clone().expect("formatted");
    assert_eq!(
        html,
        "<strong>bold <em>both</em></strong><em> italic</em> <code>🦊</code> \
         <a href=\"https://matrix.to/#/@_remote_42:example.org\">&lt;@42&gt;</a>"
    );
    assert_sanitized("entities", &html);
    assert_eq!(text.mentions.iter().collect::<Vec<_>>(), [user_id!("@_remote_42:example.org")]);
}

#[test]
fn content_reads_mentions_and_drops_reply_fallbacks() {
    use ruma::events::{Mentions, room::message::RoomMessageEventContent};
    let mut content = RoomMessageEventContent::text_html(
        "> <@bob:example.org> earlier\n\nhi Alice",
        "<mx-reply><blockquote>earlier</blockquote></mx-reply>hi \
         <a href=\"https://matrix.to/#/@_remote_42:example.org\">Alice</a>",
    );
    content.mentions = Some(Mentions::with_user_ids([user_id!("@_remote_42:example.org").into()]));
    let parsed = ParsedMessage::from_content(&content).expect("text");
    assert_eq!(parsed.to_plain(), "hi Alice");
    assert_eq!(parsed.mentioned_users().collect::<Vec<_>>(), [user_id!("@_remote_42:example.org")]);
    assert!(!parsed.mentions_room());

    let text = MatrixText::from_markdown(
        "hi <@42> and <@44>",
        &mut PatternMentions::new(&mention_pattern(), ghost),
    );
    let content = text.into_content();
    let json = serde_json::to_value(&content).expect("json");
    assert_eq!(json["body"], "hi Alice and Zoë 🦊");
    assert_eq!(
        json["formatted_body"],
        "hi <a href=\"https://matrix.to/#/@_remote_42:example.org\">Alice</a> and \
         <a href=\"https://matrix.to/#/@_remote_44:example.org\">Zoë 🦊</a>"
    );
    assert_eq!(
        json["m.mentions"]["user_ids"],
        serde_json::json!(["@_remote_42:example.org", "@_remote_44:example.org"])
    );
    let plain = MatrixText::from_markdown("just text & more", &mut ()).into_content();
    let json = serde_json::to_value(&plain).expect("json");
    assert_eq!(json["body"], "just text & more");
    assert!(json.get("formatted_body").is_none(), "{json}");
}

#[test]
fn deep_nesting_stays_within_the_stack() {
    let deep = ["<div><b>".repeat(100), "<div><b>".repeat(10_000), "<blockquote>".repeat(20_000)];
    for html in deep.map(|h| h + "deep") {
        let parsed = ParsedMessage::from_html(&html);
        assert_eq!(parsed.to_plain(), "deep");
        assert_eq!(parsed.to_markdown().trim_matches('*'), "deep");
        assert_eq!(parsed.to_entities(|_, _| None).text, "deep");
        // The strict sanitizer drops elements past its depth with their content; past the
        // parser's safe depth only the text is left.
        let clean = sanitize_html(&html);
        if super::tree::nesting(&html) > super::tree::MAX_HTML_NESTING {
            assert_eq!(clean, "deep");
        }
    }
    // Nesting that is only apparent (paragraphs and items close themselves) is kept.
    let flat = "<p>a".repeat(2_000);
    assert_eq!(ParsedMessage::from_html(&flat).nodes.len(), 2_000);

    let quotes = ">".repeat(20_000) + " deep";
    let text = MatrixText::from_markdown(&quotes, &mut ());
    assert_eq!(text.body, "> ".repeat(32) + "deep");
    let html = text.html.expect("quoted");
    assert_sanitized("deep quotes", &html);
    assert_eq!(html.matches("<blockquote>").count(), 32);
}
