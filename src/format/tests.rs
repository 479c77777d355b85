//! Properties over generated input, a bridge's own renderer, and reading events.

use proptest::prelude::*;
use ruma::UserId;

use super::*;

fn assert_clean(what: &str, html: &str) {
    assert_eq!(sanitize_html(html), html, "{what}: the sanitizer changed the output");
}

/// Every entity's UTF-16 range is whole characters and is the text it covers.
fn assert_utf16(e: &EntityText) {
    let units: Vec<u16> = e.text.encode_utf16().collect();
    for entity in &e.entities {
        let range = units.get(entity.offset..entity.offset + entity.length);
        let cut = String::from_utf16(range.expect("within the text")).expect("whole characters");
        assert_eq!(cut, e.slice(entity), "{entity:?}");
    }
}

const PIECES: &[&str] = &[
    "a",
    "bc ",
    " ",
    "  ",
    "\n",
    "\r\n",
    "\0",
    "\u{a0}",
    "😀",
    "👨‍👩‍👧",
    "🇯🇵",
    "שלום",
    "مرحبا",
    "&amp;",
    "&lt;",
    "<",
    ">",
    "*",
    "**",
    "_",
    "__",
    "~~",
    "`",
    "```",
    "|",
    "||",
    "#",
    "# ",
    "> ",
    "- ",
    "1. ",
    "\\",
    "[x]",
    "(y)",
    "\"",
    "<@42>",
    "<@43>",
];

const TAGS: &[&str] = &[
    "<b>",
    "</b>",
    "<i>",
    "</i>",
    "<u>",
    "</u>",
    "<del>",
    "</del>",
    "<p>",
    "</p>",
    "<ul>",
    "<li>",
    "</li>",
    "</ul>",
    "<ol start=\"3\">",
    "</ol>",
    "<blockquote>",
    "</blockquote>",
    "<pre><code class=\"language-rs\">",
    "</code></pre>",
    "<code>",
    "</code>",
    "<a href=\"https://x.example/a?b=1&amp;c\">",
    "<a href=\"javascript:x()\">",
    "<a href=\"https://matrix.to/#/@_remote_42:example.org\">",
    "</a>",
    "<span data-mx-spoiler>",
    "<span data-mx-spoiler=\"why\">",
    "</span>",
    "<br>",
    "<table><tr><th>",
    "</th><th>",
    "</th></tr><tr><td>",
    "</td><td>",
    "</table>",
    "<h2>",
    "</h2>",
    "<hr>",
    "<mx-reply>",
    "</mx-reply>",
    "<img src=\"mxc://x/y\" alt=\"pic\">",
];

fn html() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => prop::sample::select(PIECES).prop_map(str::to_owned),
        2 => prop::sample::select(TAGS).prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

fn markdown() -> impl Strategy<Value = String> {
    const MD: &[&str] = &[
        "[t](https://x.example/(a))",
        "[m](https://matrix.to/#/@a:example.org)",
        "![i](x.png)",
        "<b>",
        "</b>",
        "<!-- c -->",
        "\n\n",
        "\n    ",
        "| a | b |\n|---|---|\n| 1 | 2 |\n",
        "```py\n",
        "\n```\n",
        "    code\n",
        "---\n",
        "* ",
        "+ ",
        "10) ",
    ];
    let piece = prop_oneof![
        3 => prop::sample::select(PIECES).prop_map(str::to_owned),
        1 => prop::sample::select(MD).prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

fn entity_kind() -> impl Strategy<Value = EntityKind> {
    prop_oneof![
        Just(EntityKind::Bold),
        Just(EntityKind::Italic),
        Just(EntityKind::Underline),
        Just(EntityKind::Strikethrough),
        Just(EntityKind::Spoiler),
        Just(EntityKind::Code),
        Just(EntityKind::Pre { language: Some("rust".to_owned()) }),
        Just(EntityKind::Pre { language: Some("\"><script>".to_owned()) }),
        Just(EntityKind::TextLink { url: "https://x.example/\"a\"".to_owned() }),
        Just(EntityKind::TextLink { url: "javascript:x()".to_owned() }),
        Just(EntityKind::Url),
        Just(EntityKind::Mention { user: "42".to_owned() }),
        Just(EntityKind::Mention { user: "nobody".to_owned() }),
        Just(EntityKind::Blockquote),
    ]
}

fn entity_text() -> impl Strategy<Value = EntityText> {
    let text = prop::collection::vec(prop::sample::select(PIECES), 0..30).prop_map(|p| p.concat());
    text.prop_flat_map(|text| {
        let len = utf16_len(&text) + 3;
        let entity = (entity_kind(), 0..len, 0..len).prop_map(|(kind, offset, length)| Entity {
            kind,
            offset,
            length,
        });
        prop::collection::vec(entity, 0..12)
            .prop_map(move |entities| EntityText { text: text.clone(), entities })
    })
}

struct Ghosts;

impl MentionLookup for Ghosts {
    fn find_mention(&mut self, text: &str) -> Option<(std::ops::Range<usize>, Mention)> {
        let at = text.find("<@42>")?;
        Some((at..at + 5, self.remote_user("42")?))
    }
    fn remote_user(&mut self, remote_id: &str) -> Option<Mention> {
        let user = UserId::parse(format!("@_remote_{remote_id}:example.org")).ok()?;
        (remote_id == "42").then(|| Mention::new(user, "Alice <A&B>"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any HTML: the renderers do not panic, entity ranges are whole characters, and what is
    /// read back (from Markdown or entities) passes the strict sanitizer unchanged.
    #[test]
    fn any_html_renders_and_reads_back_clean(html in html()) {
        let parsed = ParsedMessage::from_html(&html);
        let _ = parsed.to_plain();
        let md = parsed.to_markdown();
        let entities = parsed.to_entities(|user, _| Some(user.localpart().to_owned()));
        assert_utf16(&entities);
        if let Some(out) = MatrixText::from_markdown(&md, &mut Ghosts).html {
            assert_clean(&format!("{html:?} via {md:?}"), &out);
        }
        if let Some(out) = MatrixText::from_entities(&entities, &mut Ghosts).html {
            assert_clean(&format!("{html:?} via entities"), &out);
        }
    }

    /// Any Markdown from a network gives sanitizer-clean HTML.
    #[test]
    fn any_markdown_gives_clean_html(md in markdown()) {
        let text = MatrixText::from_markdown(&md, &mut Ghosts);
        if let Some(out) = &text.html {
            assert_clean(&format!("{md:?}"), out);
        }
    }

    /// Any entities (overlapping, past the end, splitting characters) give sanitizer-clean
    /// HTML.
    #[test]
    fn any_entities_give_clean_html(input in entity_text()) {
        let text = MatrixText::from_entities(&input, &mut Ghosts);
        if let Some(out) = &text.html {
            assert_clean(&format!("{input:?}"), out);
        }
    }
}

/// A Slack-like network: `*bold*`, `_italic_`, `<url|text>` links, `<@U42>` mentions; the
/// rest is the plain-text default.
struct Slackish;

impl Render for Slackish {
    fn bold(&mut self, inner: String) -> String {
        format!("*{inner}*")
    }
    fn italic(&mut self, inner: String) -> String {
        format!("_{inner}_")
    }
    fn link(&mut self, url: &str, inner: String) -> String {
        format!("<{url}|{inner}>")
    }
    fn user_mention(&mut self, user_id: &UserId, inner: String) -> String {
        match user_id.localpart().strip_prefix("_remote_") {
            Some(id) => format!("<@U{id}>"),
            None => inner,
        }
    }
}

#[test]
fn a_bridge_renderer_overrides_only_what_its_network_has() {
    let parsed = ParsedMessage::from_html(
        "<p><b>Hi</b> <a href=\"https://matrix.to/#/@_remote_42:example.org\">Alice</a>, \
         <i>see</i> <a href=\"https://example.org\">this</a> and <u>that</u>:</p>\
         <ul><li>one</li><li><code>two</code></li></ul>",
    );
    assert_eq!(
        parsed.render(&mut Slackish),
        "*Hi* <@U42>, _see_ <https://example.org|this> and that:\n• one\n• two"
    );
}

#[test]
fn events_are_read_with_their_mentions_and_without_fallbacks() {
    use ruma::events::{
        relation::{InReplyTo, Reply},
        room::message::{
            ImageMessageEventContent, MessageType, Relation, ReplacementMetadata,
            RoomMessageEventContent,
        },
    };
    // A plain-text reply: the quoted lines go.
    let mut reply =
        RoomMessageEventContent::text_plain("> <@bob:example.org> earlier\n> more\n\nnow");
    reply.relates_to =
        Some(Relation::Reply(Reply::new(InReplyTo::new(ruma::owned_event_id!("$parent")))));
    let parsed = ParsedMessage::from_content(&reply).expect("text");
    assert_eq!(parsed.to_plain(), "now");

    // An edit: its new content, with the new content's mentions.
    let edit = RoomMessageEventContent::text_html("*new*", "<i>new</i>")
        .add_mentions(ruma::events::Mentions::with_room_mention())
        .make_replacement(ReplacementMetadata::new(ruma::owned_event_id!("$old"), None));
    let parsed = ParsedMessage::from_content(&edit).expect("text");
    assert_eq!(parsed.to_markdown(), "*new*");
    assert!(parsed.mentions_room());
    assert_eq!(parsed.mentioned_users().count(), 0);

    // A caption, and nothing for a message without text.
    let mut image = ImageMessageEventContent::plain("cat.png".to_owned(), "mxc://x/y".into());
    image.filename = Some("cat.png".to_owned());
    image.body = "a <b>cat</b>".to_owned();
    let content = RoomMessageEventContent::new(MessageType::Image(image));
    assert_eq!(ParsedMessage::from_content(&content).expect("caption").to_plain(), "a <b>cat</b>");
    let location = RoomMessageEventContent::new(MessageType::Location(
        ruma::events::room::message::LocationMessageEventContent::new(
            "here".to_owned(),
            "geo:0,0".to_owned(),
        ),
    ));
    assert!(ParsedMessage::from_content(&location).is_none());

    // Built for Matrix and read back: the same mentions.
    let mut text = MatrixText::from_markdown("hi <@42>, @everyone", &mut Ghosts);
    text.mentions_room = true;
    let parsed = ParsedMessage::from_content(&text.into_content()).expect("text");
    assert!(parsed.mentions_room());
    let users: Vec<_> = parsed.mentioned_users().map(|u| u.as_str()).collect();
    assert_eq!(users, ["@_remote_42:example.org"]);
    assert_eq!(parsed.to_plain(), "hi Alice <A&B>, @everyone");
}

/// Colours: `data-mx-color` spans (and `<font color>`) are a node whose hook a network
/// renders; anything but `#rrggbb` is no colour; a colour entity comes back as such a span.
#[test]
fn colours_are_read_rendered_and_written() {
    let message = ParsedMessage::from_html(
        "<span data-mx-color=\"#FF0000\" data-mx-bg-color=\"#00ff00\">red</span> \
         <font color=\"#0000ff\">blue</font> <span data-mx-color=\"red\">named</span>",
    );
    assert_eq!(
        message.nodes[0],
        Node::Color {
            fg: Some("#ff0000".into()),
            bg: Some("#00ff00".into()),
            children: vec![Node::Text("red".into())]
        }
    );
    assert_eq!(message.to_plain(), "red blue named");
    struct Colours;
    impl Render for Colours {
        fn color(&mut self, fg: Option<&str>, bg: Option<&str>, inner: String) -> String {
            format!("[{}/{}:{inner}]", fg.unwrap_or("-"), bg.unwrap_or("-"))
        }
    }
    assert_eq!(message.render(&mut Colours), "[#ff0000/#00ff00:red] [#0000ff/-:blue] named");
    let entities = message.to_entities(|_, _| None);
    let back = MatrixText::from_entities(&entities, &mut ());
    let html = back.html.unwrap();
    assert_eq!(
        html,
        "<span data-mx-bg-color=\"#00ff00\" data-mx-color=\"#ff0000\">red</span> \
         <span data-mx-color=\"#0000ff\">blue</span> named"
    );
    assert_eq!(crate::format::sanitize_html(&html), html);
}
