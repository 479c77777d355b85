//! Formatted text, both ways.
//!
//! **Matrix → network.** [`ParsedMessage`] reads a message's HTML (`formatted_body`, with
//! ruma's HTML parser) into a tree of [`Node`]s, without the reply fallback, and keeps its
//! `m.mentions`. A bridge renders the tree to its network's syntax with a [`Render`]
//! implementation: every hook (text, bold, code, link, user mention, spoiler, quote, list
//! item, ...) has a plain-text default, so it overrides only what the network has. Ready:
//! [`PlainText`], [`Markdown`] (chat flavour) and the offset-entities form
//! ([`ParsedMessage::to_entities`]: text and UTF-16 ranges, as Telegram's API takes them).
//!
//! **Network → Matrix.** [`MatrixText::from_markdown`] and [`MatrixText::from_entities`] build
//! HTML that ruma's strict sanitizer leaves unchanged, with pills
//! (`<a href="https://matrix.to/#/@user:server">Name</a>`) for the mentions a
//! [`MentionLookup`] finds, and the mentioned users for `m.mentions`;
//! [`MatrixText::into_content`] makes the message event.
//!
//! **Sanitizing.** HTML a remote network hands in is untrusted: before it reaches a room it is
//! cut down to the elements, attributes and URL schemes the Matrix specification suggests for
//! `m.room.message`, with ruma's HTML sanitizer in its strict mode ([`sanitize_html`],
//! [`sanitize_content`]). What comes out is well-formed (unclosed tags closed, stray ones
//! dropped).
//!
//! ```
//! use mxbridge::format::{EntityKind, Markdown, MatrixText, ParsedMessage};
//!
//! let message = ParsedMessage::from_html(
//!     "<b>Hi</b> <a href=\"https://matrix.to/#/@alice:example.org\">Alice</a>",
//! );
//! assert_eq!(message.to_plain(), "Hi Alice");
//! let mut markdown = Markdown::with_mentions(|user, _name| {
//!     (user.as_str() == "@alice:example.org").then(|| "<@42>".to_owned())
//! });
//! assert_eq!(message.render(&mut markdown), "**Hi** <@42>");
//! let entities = message.to_entities(|_user, _name| Some("42".to_owned()));
//! assert_eq!(entities.text, "Hi Alice");
//! assert_eq!(entities.entities[0].kind, EntityKind::Bold);
//!
//! let text = MatrixText::from_markdown("**Hi** there", &mut ());
//! assert_eq!(text.html.as_deref(), Some("<strong>Hi</strong> there"));
//! assert_eq!(text.body, "Hi there");
//! ```

mod entities;
mod render;
mod sanitize;
mod to_matrix;
mod tree;

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;

pub use entities::{Entity, EntityKind, EntityText, utf16_len};
pub use render::{
    Markdown, MentionHook, PlainText, Render, escape_markdown, hang, prefix_lines, render_nodes,
};
pub use sanitize::{sanitize_content, sanitize_html};
pub use to_matrix::{MatrixText, Mention, MentionLookup, PatternMentions};
pub use tree::{Node, ParsedMessage, TableRow};
