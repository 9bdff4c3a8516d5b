//! NATS subject patterns: what ACL rules and capability tokens grant.
//!
//! Semantics are those of NATS subjects:
//! - a subject is `.`-separated, non-empty tokens of printable ASCII without whitespace;
//! - in a pattern, `*` matches exactly one token and must be a whole token;
//! - `>` matches one or more remaining tokens and must be the last token;
//! - a subject (what is published) has no wildcards: a token that is `*` or `>`, or
//!   contains either character, makes the subject invalid, and an invalid subject is
//!   matched by nothing (fail closed).
//!
//! At most [`MAX_PATTERN_LEN`] bytes. The text form is the pattern itself; serde uses it too.

use std::fmt;
use std::str::FromStr;

use crate::error::PatternError;

/// Longest accepted pattern or subject, in bytes.
pub const MAX_PATTERN_LEN: usize = 256;

/// A validated NATS subject pattern (`nexus.salon-001.>`, `nexus.*.iot.sensor_data`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SubjectPattern {
    /// The text as given (already validated).
    text: String,
    /// The parsed tokens, in order.
    tokens: Vec<Tok>,
}

/// One token of a pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Tok {
    /// Matches exactly this token.
    Literal(String),
    /// `*`: any one token.
    One,
    /// `>`: one or more tokens; always last.
    Rest,
}

impl SubjectPattern {
    /// Parses and validates a pattern.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        check_text(text)?;
        let mut tokens = Vec::new();
        let count = text.split('.').count();
        for (index, token) in text.split('.').enumerate() {
            let tok = match token {
                "" => return Err(PatternError::EmptyToken { index }),
                "*" => Tok::One,
                ">" if index + 1 == count => Tok::Rest,
                ">" => return Err(PatternError::RestNotLast),
                t if t.contains(['*', '>']) => {
                    return Err(PatternError::PartialWildcard {
                        token: t.to_string(),
                    })
                }
                t => Tok::Literal(t.to_string()),
            };
            tokens.push(tok);
        }
        Ok(Self {
            text: text.to_string(),
            tokens,
        })
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern has no wildcard (it names exactly one subject).
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Tok::Literal(_)))
    }

    /// Whether `subject` (a concrete subject, no wildcards) is matched. An invalid subject
    /// is matched by nothing.
    pub fn matches(&self, subject: &str) -> bool {
        if check_subject(subject).is_err() {
            return false;
        }
        let mut parts = subject.split('.');
        for tok in &self.tokens {
            match (tok, parts.next()) {
                (_, None) => return false,
                (Tok::Rest, Some(_)) => return true,
                (Tok::One, Some(_)) => {}
                (Tok::Literal(lit), Some(part)) => {
                    if lit != part {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// Whether every subject matched by `other` is also matched by `self`.
    ///
    /// This is the attenuation test: a child grant must be covered by a parent grant.
    /// Token by token: a literal covers only the same literal, `*` covers a literal or `*`,
    /// and `>` covers whatever non-empty rest `other` has. Anything else (a `*` or `>` of
    /// `other` against a literal, `other`'s `>` against `*`, different lengths) is not
    /// covered, because `other` then matches a subject that `self` does not.
    pub fn covers(&self, other: &SubjectPattern) -> bool {
        let theirs = &other.tokens;
        for (i, mine) in self.tokens.iter().enumerate() {
            let Some(their) = theirs.get(i) else {
                return false;
            };
            match (mine, their) {
                (Tok::Rest, _) => return true,
                (_, Tok::Rest) => return false,
                (Tok::One, _) => {}
                (Tok::Literal(a), Tok::Literal(b)) if a == b => {}
                (Tok::Literal(_), _) => return false,
            }
        }
        theirs.len() == self.tokens.len()
    }

    /// Whether some subject is matched by both patterns (JetStream refuses overlapping
    /// filters where each message must belong to one of them).
    pub fn overlaps(&self, other: &SubjectPattern) -> bool {
        let (mine, theirs) = (&self.tokens, &other.tokens);
        for i in 0..mine.len().max(theirs.len()) {
            match (mine.get(i), theirs.get(i)) {
                (Some(Tok::Rest), Some(_)) | (Some(_), Some(Tok::Rest)) => return true,
                (Some(Tok::Literal(a)), Some(Tok::Literal(b))) if a != b => return false,
                (Some(_), Some(_)) => {}
                // One ran out of tokens while the other has more (and no `>` before).
                _ => return false,
            }
        }
        true
    }
}

/// Checks that `subject` is a valid concrete subject (no wildcards), as publishers send.
pub fn check_subject(subject: &str) -> Result<(), PatternError> {
    check_text(subject)?;
    for (index, token) in subject.split('.').enumerate() {
        if token.is_empty() {
            return Err(PatternError::EmptyToken { index });
        }
        if token.contains(['*', '>']) {
            return Err(PatternError::WildcardInSubject {
                token: token.to_string(),
            });
        }
    }
    Ok(())
}

/// Length and character checks shared by patterns and subjects.
fn check_text(text: &str) -> Result<(), PatternError> {
    if text.is_empty() {
        return Err(PatternError::Empty);
    }
    if text.len() > MAX_PATTERN_LEN {
        return Err(PatternError::TooLong {
            len: text.len(),
            max: MAX_PATTERN_LEN,
        });
    }
    if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(PatternError::BadChar { ch: c });
    }
    Ok(())
}

impl fmt::Display for SubjectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for SubjectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubjectPattern({:?})", self.text)
    }
}

impl FromStr for SubjectPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for SubjectPattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for SubjectPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SubjectPattern;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a NATS subject pattern such as `nexus.salon-001.>`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                SubjectPattern::parse(v).map_err(|e| E::custom(format!("`{v}`: {e}")))
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn overlap_means_some_subject_matches_both() {
        let p = |t: &str| SubjectPattern::parse(t).expect("pattern");
        for (a, b) in [
            ("nexus.*.iot.>", "nexus._core.>"),
            ("nexus.*.iot.>", "nexus.salon.>"),
            ("a.b", "a.*"),
            ("a.>", "a.b.c"),
            ("*.b", "a.*"),
            ("a.b", "a.b"),
        ] {
            assert!(p(a).overlaps(&p(b)), "{a} and {b} overlap");
            assert!(p(b).overlaps(&p(a)), "{b} and {a} overlap");
        }
        for (a, b) in [
            ("nexus._core.edge.>", "nexus.*.iot.>"),
            ("a.b", "a.c"),
            ("a.*", "a.b.c"),
            ("a.>", "a"),
            ("a.b.*", "a.b"),
        ] {
            assert!(!p(a).overlaps(&p(b)), "{a} and {b} are disjoint");
            assert!(!p(b).overlaps(&p(a)), "{b} and {a} are disjoint");
        }
    }
    use super::*;

    fn p(text: &str) -> SubjectPattern {
        SubjectPattern::parse(text).expect("valid pattern")
    }

    #[test]
    fn valid_patterns_parse_and_print_back() {
        for text in [
            "nexus.salon-001.>",
            "nexus.*.iot.sensor_data",
            ">",
            "*",
            "$JS.API.>",
        ] {
            assert_eq!(p(text).to_string(), text);
            assert_eq!(text.parse::<SubjectPattern>(), Ok(p(text)));
        }
        assert!(p("a.b").is_literal());
        assert!(!p("a.*").is_literal());
    }

    #[test]
    fn invalid_patterns_get_precise_errors() {
        use PatternError::*;
        let long = "a".repeat(MAX_PATTERN_LEN + 1);
        let cases: Vec<(&str, PatternError)> = vec![
            ("", Empty),
            (
                &long,
                TooLong {
                    len: MAX_PATTERN_LEN + 1,
                    max: MAX_PATTERN_LEN,
                },
            ),
            ("a..b", EmptyToken { index: 1 }),
            (".a", EmptyToken { index: 0 }),
            ("a.", EmptyToken { index: 1 }),
            ("a b", BadChar { ch: ' ' }),
            ("a.\tb", BadChar { ch: '\t' }),
            ("a.é", BadChar { ch: 'é' }),
            ("a.>.b", RestNotLast),
            ("a.b*", PartialWildcard { token: "b*".into() }),
            ("a.>b", PartialWildcard { token: ">b".into() }),
        ];
        for (text, err) in cases {
            assert_eq!(SubjectPattern::parse(text), Err(err), "{text:?}");
        }
        assert_eq!(p("a.b.c").as_str().len(), 5);
    }

    #[test]
    fn matching_follows_nats_semantics() {
        assert!(p("a.b").matches("a.b"));
        assert!(!p("a.b").matches("a.b.c"));
        assert!(!p("a.b").matches("a"));
        assert!(p("a.*").matches("a.b"));
        assert!(!p("a.*").matches("a.b.c"));
        assert!(!p("a.*").matches("a"));
        assert!(p("a.>").matches("a.b"));
        assert!(p("a.>").matches("a.b.c"));
        assert!(!p("a.>").matches("a"));
        assert!(p(">").matches("x"));
        assert!(p("*.b.>").matches("x.b.c.d"));
    }

    #[test]
    fn invalid_subjects_are_matched_by_nothing() {
        for subject in ["", "a..b", "a.*", "a.>", "a b", "a.b*"] {
            assert!(!p(">").matches(subject), "{subject:?}");
        }
        assert_eq!(
            check_subject("a.*"),
            Err(PatternError::WildcardInSubject { token: "*".into() })
        );
        assert_eq!(check_subject("a.b"), Ok(()));
    }

    #[test]
    fn covers_is_the_subset_relation() {
        assert!(p("a.>").covers(&p("a.b")));
        assert!(p("a.>").covers(&p("a.*.c")));
        assert!(p("a.>").covers(&p("a.>")));
        assert!(p("a.>").covers(&p("a.*.>")));
        assert!(!p("a.*.>").covers(&p("a.>")));
        assert!(p("a.*").covers(&p("a.b")));
        assert!(p("a.*").covers(&p("a.*")));
        assert!(!p("a.*").covers(&p("a.>")));
        assert!(!p("a.b").covers(&p("a.*")));
        assert!(!p("a.b").covers(&p("a.b.c")));
        assert!(!p("a.b.c").covers(&p("a.b")));
        assert!(!p("a.>").covers(&p("a")));
        assert!(p(">").covers(&p("*")));
    }

    #[test]
    fn serde_uses_the_text_form_and_validates() {
        #[derive(serde::Deserialize)]
        struct Doc {
            p: Vec<SubjectPattern>,
        }
        let doc: Doc = toml::from_str(r#"p = ["a.>", "b.*"]"#).expect("parses");
        assert_eq!(doc.p, vec![p("a.>"), p("b.*")]);
        let err = toml::from_str::<Doc>(r#"p = ["a.>.b"]"#)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("`a.>.b`"), "{err}");
    }
}
