//! The strict sanitizer for HTML from outside Matrix.

use std::borrow::Cow;

use ruma::{
    events::room::message::{
        FormattedBody, MessageFormat, MessageType, Relation, RoomMessageEventContent,
    },
    html::SanitizerConfig,
};

/// Elements removed with everything inside them: their content is code or a fallback, not text
/// a reader should see. Other elements the specification does not suggest are dropped and their
/// content kept.
const REMOVED_WITH_CONTENT: [&str; 9] =
    ["script", "style", "iframe", "noscript", "template", "object", "embed", "title", "head"];

/// Sanitizes HTML from outside Matrix to what the specification allows in a message (strict
/// mode): `<script>`, `<style>`, `<iframe>` and the like go with their content; other
/// elements outside the allowed set go and their text stays; `on*`, `style` and every other
/// attribute outside the allowed set go; links keep only `http`, `https`, `ftp`, `mailto` and
/// `magnet` URLs and images only `mxc` ones (so no `javascript:` or `data:`); unclosed tags are
/// closed. HTML nested hundreds of levels deep keeps only its text.
pub fn sanitize_html(html: &str) -> String {
    // Too deep a tree would overflow the stack when dropped: its tags go first.
    let parsed = super::tree::parse_html(html);
    parsed.sanitize_with(&SanitizerConfig::strict().remove_elements(REMOVED_WITH_CONTENT));
    parsed.to_string()
}

/// `content` with every HTML body sanitized ([`sanitize_html`]): the formatted body or caption of
/// text, notice, emote, image, file, audio and video messages, and of an edit's new content.
/// Borrowed when there is no HTML to sanitize.
pub fn sanitize_content(content: &RoomMessageEventContent) -> Cow<'_, RoomMessageEventContent> {
    let in_edit = match &content.relates_to {
        Some(Relation::Replacement(replacement)) => html_of(&replacement.new_content.msgtype),
        _ => None,
    };
    if html_of(&content.msgtype).is_none() && in_edit.is_none() {
        return Cow::Borrowed(content);
    }
    let mut content = content.clone();
    sanitize_msgtype(&mut content.msgtype);
    if let Some(Relation::Replacement(replacement)) = &mut content.relates_to {
        sanitize_msgtype(&mut replacement.new_content.msgtype);
    }
    Cow::Owned(content)
}

/// The formatted body of a message type, if it is HTML.
fn html_of(msgtype: &MessageType) -> Option<&FormattedBody> {
    formatted(msgtype)?.as_ref().filter(|f| f.format == MessageFormat::Html)
}

fn formatted(msgtype: &MessageType) -> Option<&Option<FormattedBody>> {
    match msgtype {
        MessageType::Text(m) => Some(&m.formatted),
        MessageType::Notice(m) => Some(&m.formatted),
        MessageType::Emote(m) => Some(&m.formatted),
        MessageType::Image(m) => Some(&m.formatted),
        MessageType::File(m) => Some(&m.formatted),
        MessageType::Audio(m) => Some(&m.formatted),
        MessageType::Video(m) => Some(&m.formatted),
        _ => None,
    }
}

fn sanitize_msgtype(msgtype: &mut MessageType) {
    let formatted = match msgtype {
        MessageType::Text(m) => &mut m.formatted,
        MessageType::Notice(m) => &mut m.formatted,
        MessageType::Emote(m) => &mut m.formatted,
        MessageType::Image(m) => &mut m.formatted,
        MessageType::File(m) => &mut m.formatted,
        MessageType::Audio(m) => &mut m.formatted,
        MessageType::Video(m) => &mut m.formatted,
        _ => return,
    };
    if let Some(f) = formatted
        && f.format == MessageFormat::Html
    {
        f.body = sanitize_html(&f.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_markup_is_kept() {
        let html = r##"<p>Hello <b>bold</b>, <a href="https://example.org/x?a=1&amp;b=2">link</a>,
<code class="language-rust">fn</code> <span data-mx-color="#ff0000">red</span></p>"##;
        assert_eq!(sanitize_html(html), html);
        assert_eq!(sanitize_html("plain &amp; simple"), "plain &amp; simple");
    }

    #[test]
    fn scripts_styles_and_frames_are_stripped_with_their_content() {
        for (html, want) in [
            ("a<script>alert(1)</script>b", "ab"),
            ("a<SCRIPT src=\"https://evil.example/x.js\"></SCRIPT>b", "ab"),
            ("a<style>body { display: none }</style>b", "ab"),
            ("a<iframe src=\"https://evil.example\">fallback</iframe>b", "ab"),
            ("a<noscript><b>x</b></noscript>b", "ab"),
            ("a<object data=\"x.swf\"></object><embed src=\"x.swf\">b", "ab"),
        ] {
            assert_eq!(sanitize_html(html), want, "{html}");
        }
    }

    #[test]
    fn event_handler_and_style_attributes_are_stripped() {
        let img = sanitize_html(r#"<img src="mxc://localhost/a" onerror="alert(1)" alt="x">"#);
        assert!(!img.contains("onerror") && img.contains(r#"src="mxc://localhost/a""#), "{img}");
        assert_eq!(
            sanitize_html(r#"<b onclick="alert(1)" onmouseover="x()" style="color:red">hi</b>"#),
            "<b>hi</b>"
        );
        // An element outside the allowed set goes, its text stays.
        assert_eq!(sanitize_html(r#"<marquee onstart="x()">hi</marquee>"#), "hi");
    }

    #[test]
    fn javascript_and_data_urls_are_stripped() {
        for html in [
            r#"<a href="javascript:alert(1)">x</a>"#,
            r#"<a href="JaVaScRiPt:alert(1)">x</a>"#,
            r#"<a href=" javascript:alert(1)">x</a>"#,
            r#"<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>"#,
            r#"<a href="vbscript:x">x</a>"#,
        ] {
            let out = sanitize_html(html);
            assert!(!out.contains("href"), "{html} gave {out}");
            assert!(out.contains('x'), "{html} gave {out}");
        }
        for html in [
            r#"<img src="data:image/png;base64,iVBORw0KGgo=">"#,
            r#"<img src="javascript:alert(1)">"#,
            r#"<img src="https://tracker.example/p.gif">"#,
        ] {
            let out = sanitize_html(html);
            assert!(!out.contains("src"), "{html} gave {out}");
        }
    }

    #[test]
    fn unclosed_and_stray_tags_are_balanced() {
        assert_eq!(sanitize_html("<b>bold <i>both"), "<b>bold <i>both</i></b>");
        assert_eq!(sanitize_html("text</div></b>"), "text");
        assert_eq!(sanitize_html("<p>one<p>two"), "<p>one</p><p>two</p>");
        assert_eq!(
            sanitize_html("<a href=\"https://x.example\">open"),
            "<a href=\"https://x.example\">open</a>"
        );
        assert_eq!(sanitize_html("<script>never closed"), "");
    }

    #[test]
    fn html_bodies_of_a_message_and_its_edit_are_sanitized_others_left_alone() {
        use ruma::events::room::message::ReplacementMetadata;
        let plain = RoomMessageEventContent::text_plain("<script>as text</script>");
        assert!(matches!(sanitize_content(&plain), Cow::Borrowed(_)));
        let clean = RoomMessageEventContent::text_html("hi", "<b>hi</b>");
        let json = |c: &RoomMessageEventContent| serde_json::to_value(c).unwrap();
        assert_eq!(json(&sanitize_content(&clean)), json(&clean));

        for content in [
            RoomMessageEventContent::text_html(
                "hi",
                "<b onclick=\"x()\">hi</b><script>x()</script>",
            ),
            RoomMessageEventContent::notice_html(
                "hi",
                "<b onclick=\"x()\">hi</b><script>x()</script>",
            ),
            RoomMessageEventContent::emote_html(
                "hi",
                "<b onclick=\"x()\">hi</b><script>x()</script>",
            ),
        ] {
            let out = sanitize_content(&content);
            let json = serde_json::to_value(out.as_ref()).unwrap();
            assert_eq!(json["formatted_body"], "<b>hi</b>", "{json}");
            assert_eq!(json["body"], "hi");
        }

        let original = ruma::owned_event_id!("$original");
        let edit = RoomMessageEventContent::text_html("new", "<i onmouseover=\"x()\">new</i>")
            .make_replacement(ReplacementMetadata::new(original, None));
        let json = serde_json::to_value(sanitize_content(&edit).as_ref()).unwrap();
        assert_eq!(json["m.new_content"]["formatted_body"], "<i>new</i>", "{json}");
        assert_eq!(json["formatted_body"], "* <i>new</i>", "{json}");
    }
}
