//! Subject rewrites: how a bridge rule maps one subject space onto another.
//!
//! A rewrite is a pair of patterns with the same wildcards in the same order, e.g.
//! `app.booking.*` → `booking.*` or `app.>` → `shop.>`. Applying it to a subject that the
//! first pattern matches fills the second pattern's wildcards, in order, with the tokens
//! the first one's wildcards matched: `app.booking.created` → `booking.created`.
//!
//! Used both ways by the agent's subject bridge: local subjects → event names (up) and
//! command names → local subjects (down).

use std::fmt;

use crate::pattern::{check_subject, SubjectPattern};

/// Why a pair of patterns is not a rewrite.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// One side is not a valid pattern.
    #[error("`{text}` is not a subject pattern: {reason}")]
    BadPattern {
        /// The side as written.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The two sides do not have the same wildcards in the same order.
    #[error(
        "`{from}` and `{to}` must have the same wildcards in the same order \
         (`*` for `*`, `>` for `>`): found [{from_wildcards}] and [{to_wildcards}]"
    )]
    WildcardMismatch {
        /// The matching side.
        from: String,
        /// The produced side.
        to: String,
        /// The wildcards of `from`, in order.
        from_wildcards: String,
        /// The wildcards of `to`, in order.
        to_wildcards: String,
    },
}

/// One token of the produced side.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Literal(String),
    /// The next captured wildcard (`*`: one token; `>`: the rest).
    Capture,
}

/// A validated rewrite `from` → `to`.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectRewrite {
    from: SubjectPattern,
    to_text: String,
    to: Vec<Out>,
}

impl SubjectRewrite {
    /// Checks that `from` and `to` are patterns with the same wildcards in the same order.
    pub fn new(from: &str, to: &str) -> Result<Self, RewriteError> {
        let bad = |text: &str, reason: String| RewriteError::BadPattern {
            text: text.to_owned(),
            reason,
        };
        let from_pattern = SubjectPattern::parse(from).map_err(|e| bad(from, e.to_string()))?;
        // `to` parses as a pattern too: the same token rules, `>` last.
        SubjectPattern::parse(to).map_err(|e| bad(to, e.to_string()))?;
        let wildcards = |text: &str| -> String {
            text.split('.')
                .filter(|t| *t == "*" || *t == ">")
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (from_wildcards, to_wildcards) = (wildcards(from), wildcards(to));
        if from_wildcards != to_wildcards {
            return Err(RewriteError::WildcardMismatch {
                from: from.to_owned(),
                to: to.to_owned(),
                from_wildcards,
                to_wildcards,
            });
        }
        let to_tokens = to
            .split('.')
            .map(|t| match t {
                "*" | ">" => Out::Capture,
                literal => Out::Literal(literal.to_owned()),
            })
            .collect();
        Ok(Self {
            from: from_pattern,
            to_text: to.to_owned(),
            to: to_tokens,
        })
    }

    /// The matching side.
    pub fn from(&self) -> &SubjectPattern {
        &self.from
    }

    /// The produced side, as written.
    pub fn to(&self) -> &str {
        &self.to_text
    }

    /// The rewritten subject, if `subject` is a valid subject that `from` matches.
    pub fn apply(&self, subject: &str) -> Option<String> {
        if check_subject(subject).is_err() || !self.from.matches(subject) {
            return None;
        }
        // The tokens each wildcard of `from` matched, in order.
        let mut captures = Vec::new();
        let tokens: Vec<&str> = subject.split('.').collect();
        for (index, token) in self.from.as_str().split('.').enumerate() {
            match token {
                "*" => captures.push(tokens.get(index)?.to_string()),
                ">" => captures.push(tokens.get(index..)?.join(".")),
                _ => {}
            }
        }
        let mut captures = captures.into_iter();
        let out: Option<Vec<String>> = self
            .to
            .iter()
            .map(|token| match token {
                Out::Literal(literal) => Some(literal.clone()),
                Out::Capture => captures.next(),
            })
            .collect();
        Some(out?.join("."))
    }
}

impl fmt::Debug for SubjectRewrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubjectRewrite({} -> {})", self.from, self.to_text)
    }
}

impl fmt::Display for SubjectRewrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(from: &str, to: &str) -> SubjectRewrite {
        SubjectRewrite::new(from, to).expect("valid rewrite")
    }

    #[test]
    fn wildcards_carry_their_tokens_over_in_order() {
        let r = rw("app.booking.*", "booking.*");
        assert_eq!(
            r.apply("app.booking.created").as_deref(),
            Some("booking.created")
        );
        assert_eq!(r.apply("app.booking.created.x"), None);
        assert_eq!(r.apply("app.wallet.created"), None);

        let r = rw("app.>", "shop.>");
        assert_eq!(
            r.apply("app.pos.sale.done").as_deref(),
            Some("shop.pos.sale.done")
        );
        assert_eq!(r.apply("app"), None);

        let r = rw("site.*.door.*", "door.*.*");
        assert_eq!(
            r.apply("site.a1.door.opened").as_deref(),
            Some("door.a1.opened")
        );

        let r = rw("kiosk.ping", "kiosk.pinged");
        assert_eq!(r.apply("kiosk.ping").as_deref(), Some("kiosk.pinged"));
        assert_eq!(r.apply("kiosk.pong"), None);
    }

    #[test]
    fn wildcards_must_correspond() {
        for (from, to) in [
            ("app.*", "booking.created"),
            ("app.>", "booking.*"),
            ("app.*.>", "x.>.y"),
            ("app.*.>", "x.>"),
            ("a.b", "c.*"),
        ] {
            assert!(
                SubjectRewrite::new(from, to).is_err(),
                "{from} -> {to} should be refused"
            );
        }
        assert!(matches!(
            SubjectRewrite::new("app..x", "y"),
            Err(RewriteError::BadPattern { .. })
        ));
    }

    #[test]
    fn subjects_with_wildcards_are_never_rewritten() {
        let r = rw("app.>", "x.>");
        assert_eq!(r.apply("app.*"), None);
        assert_eq!(r.apply("app.>"), None);
        assert_eq!(r.apply("app..b"), None);
    }
}
