//! A JSON payload read along JSON pointers, each number kept as its text.
//!
//! serde_json refuses a whole document in which any number overflows an `f64` (`1e999`,
//! "number out of range"), so parsed into a `Value` a reading out of range would be
//! `malformed_json`, and one in a field no rule reads would cost the good metrics beside
//! it. Here the document's syntax is checked once by serde_json with every value skipped,
//! not converted (a `RawValue`); the values a rule names are then looked up along their
//! pointers, and a number is handed over as its decimal text for the mapping to convert:
//! `non_finite` for what overflows, exact integer arithmetic for times.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A syntactically valid JSON document (or a part of one).
#[derive(Debug, Clone, Copy)]
pub(super) struct Json<'a>(&'a RawValue);

/// A value found at a pointer.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Found<'a> {
    Null,
    Bool,
    /// A number as its JSON text (`-1.5e3`), not yet converted.
    Number(&'a str),
    String(Cow<'a, str>),
    Array,
    Object,
}

impl<'a> Json<'a> {
    /// Checks the syntax of a whole document (numbers are not converted).
    pub(super) fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text).map(Json)
    }

    /// The value at an RFC 6901 pointer, with `serde_json::Value::pointer`'s rules (the last
    /// of duplicate keys wins, as when parsed into a `Value`).
    pub(super) fn pointer(self, pointer: &str) -> Option<Json<'a>> {
        if pointer.is_empty() {
            return Some(self);
        }
        let tokens = pointer.strip_prefix('/')?;
        tokens.split('/').try_fold(self, |target, token| {
            let token: Cow<'_, str> = if token.contains('~') {
                Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
            } else {
                Cow::Borrowed(token)
            };
            target.child(&token)
        })
    }

    /// What the value is; a string is unescaped, a number left as text.
    pub(super) fn value(self) -> Result<Found<'a>, serde_json::Error> {
        let text = self.0.get();
        Ok(match text.as_bytes().first() {
            Some(b'n') => Found::Null,
            Some(b't' | b'f') => Found::Bool,
            Some(b'"') => Found::String(serde_json::from_str::<Text<'a>>(text)?.0),
            Some(b'[') => Found::Array,
            Some(b'{') => Found::Object,
            // The syntax was checked: anything else is a number.
            _ => Found::Number(text),
        })
    }

    fn child(self, token: &str) -> Option<Json<'a>> {
        let text = self.0.get();
        let mut de = serde_json::Deserializer::from_str(text);
        let found = match text.as_bytes().first() {
            Some(b'{') => de.deserialize_map(Member(token)),
            Some(b'[') => match index(token) {
                Some(index) => de.deserialize_seq(Element(index)),
                None => return None,
            },
            _ => return None,
        };
        found.ok().flatten().map(Json)
    }
}

/// An array index token: digits without a leading zero or sign (as `Value::pointer`).
fn index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

/// Finds a member of an object, skipping the others.
struct Member<'k>(&'k str);

impl<'de> Visitor<'de> for Member<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(matches) = map.next_key_seed(KeyIs(self.0))? {
            if matches {
                found = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Whether a key equals the one looked for (compared in place, not allocated).
struct KeyIs<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// Finds an element of an array, skipping the others.
struct Element(usize);

impl<'de> Visitor<'de> for Element {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        let mut at = 0;
        loop {
            if at == self.0 {
                match seq.next_element()? {
                    Some(value) => found = Some(value),
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            at += 1;
        }
        Ok(found)
    }
}

/// A JSON string, borrowed from the payload when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at<'a>(doc: &'a str, pointer: &str) -> Option<Found<'a>> {
        Json::parse(doc)
            .expect("valid JSON")
            .pointer(pointer)
            .map(|json| json.value().expect("a value"))
    }

    #[test]
    fn pointers_resolve_like_serde_json_values() {
        let doc = r#"{"a":{"b":[10,{"c":"x"}]},"a/b":1,"m~n":2,"e\u0073c":3,"":4,"d":1,"d":2}"#;
        let value: serde_json::Value = serde_json::from_str(doc).expect("valid");
        for pointer in [
            "", "/a", "/a/b", "/a/b/0", "/a/b/1/c", "/a/b/01", "/a/b/+1", "/a/b/2", "/a/c",
            "/a~1b", "/m~0n", "/esc", "/", "/d", "a", "/a/b/0/x",
        ] {
            let ours = at(doc, pointer);
            let theirs = value.pointer(pointer);
            match (ours, theirs) {
                (None, None) => {}
                (Some(Found::Number(text)), Some(serde_json::Value::Number(n))) => {
                    assert_eq!(text, n.to_string(), "{pointer}")
                }
                (Some(Found::String(ours)), Some(serde_json::Value::String(theirs))) => {
                    assert_eq!(&ours, theirs, "{pointer}")
                }
                (Some(Found::Array), Some(serde_json::Value::Array(_)))
                | (Some(Found::Object), Some(serde_json::Value::Object(_))) => {}
                (ours, theirs) => panic!("{pointer}: {ours:?} vs {theirs:?}"),
            }
        }
    }

    #[test]
    fn numbers_are_their_text_even_out_of_an_f64s_range() {
        let doc = r#"{"t":1e999,"u":-1e999,"ms":1749996800365,"s":1749996800.365}"#;
        assert!(serde_json::from_str::<serde_json::Value>(doc).is_err());
        assert_eq!(at(doc, "/t"), Some(Found::Number("1e999")));
        assert_eq!(at(doc, "/u"), Some(Found::Number("-1e999")));
        assert_eq!(at(doc, "/ms"), Some(Found::Number("1749996800365")));
        assert_eq!(at(doc, "/s"), Some(Found::Number("1749996800.365")));
    }

    #[test]
    fn other_values_are_typed_and_strings_unescaped() {
        let doc = r#"{"n":null,"b":false,"s":"a\"b","p":"plain","l":[],"o":{}}"#;
        assert_eq!(at(doc, "/n"), Some(Found::Null));
        assert_eq!(at(doc, "/b"), Some(Found::Bool));
        assert_eq!(at(doc, "/s"), Some(Found::String("a\"b".into())));
        assert!(matches!(
            at(doc, "/p"),
            Some(Found::String(Cow::Borrowed("plain")))
        ));
        assert_eq!(at(doc, "/l"), Some(Found::Array));
        assert_eq!(at(doc, "/o"), Some(Found::Object));
    }

    #[test]
    fn the_syntax_of_the_whole_document_is_checked() {
        for bad in [
            r#"{"t":1"#,
            r#"{"t":1,}"#,
            r#"{"t":01}"#,
            r#"{"t":1.}"#,
            r#"{"t":"a"} x"#,
            "{\"t\":\"\u{1}\"}",
            "online",
            "",
        ] {
            assert!(Json::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Json::parse(" {\"t\": 1} \n").is_ok());
    }
}
