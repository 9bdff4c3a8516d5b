//! Property tests of the trust core's laws: the matcher against a reference, `covers` is
//! exactly the subset relation, attenuation never widens a grant, ACL deny wins, wire
//! forms round-trip, and decoding arbitrary bytes never panics.

#![allow(clippy::unwrap_used)]

use nexus_policies::token::{Chain, Claims, RevocationList, Role, Token, TokenId, Verifier};
use nexus_policies::{
    Acl, AclRule, Action, Decision, Principal, SecretKey, SubjectPattern, TokenError, UnixTime,
};
use proptest::prelude::*;

const T0: i64 = 1_780_000_000;

/// Pattern tokens over a tiny alphabet so that patterns and subjects collide often.
fn pattern_tokens() -> impl Strategy<Value = Vec<String>> {
    (
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "*"]), 1..5),
        any::<bool>(),
    )
        .prop_map(|(mut toks, tail)| {
            if tail {
                toks.push(">");
            }
            toks.into_iter().map(String::from).collect()
        })
}

fn pattern() -> impl Strategy<Value = SubjectPattern> {
    pattern_tokens().prop_map(|t| t.join(".").parse().unwrap())
}

fn subject_tokens() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d"]), 1..7)
        .prop_map(|t| t.into_iter().map(String::from).collect())
}

/// The obvious recursive matcher.
fn reference(p: &[&str], s: &[&str]) -> bool {
    match (p.split_first(), s.split_first()) {
        (None, None) => true,
        (Some((&">", _)), Some(_)) => true,
        (Some((&"*", pr)), Some((_, sr))) => reference(pr, sr),
        (Some((lit, pr)), Some((tok, sr))) => lit == tok && reference(pr, sr),
        _ => false,
    }
}

/// A subject matched by `p`: `*` → `fill`, `>` → `rest` copies of `fill`.
fn instantiate(p: &SubjectPattern, fill: &str, rest: usize) -> String {
    let toks: Vec<String> = p
        .as_str()
        .split('.')
        .flat_map(|t| match t {
            "*" => vec![fill.to_string()],
            ">" => vec![fill.to_string(); rest.max(1)],
            lit => vec![lit.to_string()],
        })
        .collect();
    toks.join(".")
}

fn sk(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32]).unwrap()
}

fn parent_token(publish: Vec<SubjectPattern>, receive: Vec<SubjectPattern>) -> Token {
    let anchor = sk(1);
    Token::issue(
        Claims {
            id: TokenId([1; 16]),
            parent: None,
            issuer_key: anchor.public(),
            node_id: "hub-1".into(),
            node_key: sk(2).public(),
            tenant: None,
            role: Role::Hub,
            publish,
            receive,
            not_before: UnixTime(T0),
            expires: UnixTime(T0 + 1000),
        },
        &anchor,
        None,
    )
    .unwrap()
}

fn child_claims(publish: Vec<SubjectPattern>, receive: Vec<SubjectPattern>) -> Claims {
    Claims {
        id: TokenId([2; 16]),
        parent: Some(TokenId([1; 16])),
        issuer_key: sk(2).public(),
        node_id: "edge-1".into(),
        node_key: sk(3).public(),
        tenant: None,
        role: Role::Member,
        publish,
        receive,
        not_before: UnixTime(T0 + 10),
        expires: UnixTime(T0 + 500),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// `matches` agrees with the recursive reference matcher.
    #[test]
    fn matcher_agrees_with_the_reference(p in pattern_tokens(), s in subject_tokens()) {
        let pattern: SubjectPattern = p.join(".").parse().unwrap();
        let pr: Vec<&str> = p.iter().map(String::as_str).collect();
        let sr: Vec<&str> = s.iter().map(String::as_str).collect();
        prop_assert_eq!(pattern.matches(&s.join(".")), reference(&pr, &sr));
    }

    /// Soundness: if `a` covers `b`, every sampled subject matched by `b` is matched by `a`.
    #[test]
    fn covers_is_sound(
        a in pattern(),
        b in pattern(),
        fill in prop::sample::select(vec!["a", "b", "c", "d"]),
        rest in 1usize..4,
    ) {
        let subject = instantiate(&b, fill, rest);
        prop_assert!(b.matches(&subject));
        if a.covers(&b) {
            prop_assert!(a.matches(&subject), "{} covers {} but not {}", a, b, subject);
        }
    }

    /// Exactness: `a` covers `b` iff `a` matches `b`'s two extreme witnesses (wildcards
    /// filled with a token `a` never names; `>` filled with one and with many tokens).
    #[test]
    fn covers_is_exact(a in pattern(), b in pattern()) {
        let long = a.as_str().split('.').count() + 1;
        let w1 = instantiate(&b, "z", 1);
        let w2 = instantiate(&b, "z", long);
        prop_assert_eq!(a.covers(&b), a.matches(&w1) && a.matches(&w2), "a={} b={}", a, b);
    }

    /// Attenuation never widens: either issuing fails, or every child pattern is covered
    /// by a parent pattern of the same kind, every subject the child may use the parent
    /// may use, and the chain verifies.
    #[test]
    fn attenuation_never_widens(
        pp in prop::collection::vec(pattern(), 0..4),
        pr in prop::collection::vec(pattern(), 0..4),
        cp in prop::collection::vec(pattern(), 0..4),
        cr in prop::collection::vec(pattern(), 0..4),
        fill in prop::sample::select(vec!["a", "b", "d"]),
    ) {
        let parent = parent_token(pp.clone(), pr.clone());
        match Token::issue(child_claims(cp.clone(), cr.clone()), &sk(2), Some(&parent)) {
            Err(e) => prop_assert!(matches!(e, TokenError::OverReaching { .. }), "{e:?}"),
            Ok(child) => {
                for (c, p) in [(&cp, &pp), (&cr, &pr)] {
                    for pat in c {
                        prop_assert!(p.iter().any(|q| q.covers(pat)));
                        let s = instantiate(pat, fill, 2);
                        prop_assert!(p.iter().any(|q| q.matches(&s)));
                    }
                }
                let v = Verifier::new(vec![sk(1).public()]);
                let grant = v.verify_chain(&[child, parent], UnixTime(T0 + 100)).unwrap();
                for pat in &cp {
                    let s = instantiate(pat, fill, 1);
                    prop_assert!(grant.allows_publish(&s));
                    prop_assert!(pp.iter().any(|q| q.matches(&s)));
                }
            }
        }
    }

    /// Tokens, chains and revocation lists round-trip through their wire forms byte for
    /// byte.
    #[test]
    fn wire_forms_round_trip(
        publish in prop::collection::vec(pattern(), 0..6),
        receive in prop::collection::vec(pattern(), 0..6),
        id in any::<[u8; 16]>(),
        nb in -1_000_000_000i64..4_000_000_000,
        len in 1i64..1_000_000_000,
        tenant in prop::option::of(prop::sample::select(vec!["salon-001", "t", "x_y-z"])),
        revoked in prop::collection::vec(any::<[u8; 16]>(), 0..20),
    ) {
        let anchor = sk(1);
        let claims = Claims {
            id: TokenId(id),
            tenant: tenant.map(String::from),
            not_before: UnixTime(nb),
            expires: UnixTime(nb + len),
            parent: None,
            issuer_key: anchor.public(),
            role: Role::Hub,
            ..child_claims(publish, receive)
        };
        let token = Token::issue(claims.clone(), &anchor, None).unwrap();
        let bytes = token.encode();
        let back = Token::decode(&bytes).unwrap();
        prop_assert_eq!(back.claims(), &claims);
        prop_assert_eq!(back.encode(), bytes);
        let chain = Chain::new(vec![token.clone(), token]).unwrap();
        let bytes = chain.encode();
        let back = Chain::decode(&bytes).unwrap();
        prop_assert_eq!(back.encode(), bytes);
        prop_assert_eq!(back.key(), chain.key());
        let ids: Vec<TokenId> = revoked.into_iter().map(TokenId).collect();
        let list = RevocationList::issue(ids, UnixTime(nb), &anchor).unwrap();
        prop_assert_eq!(RevocationList::decode(&list.encode()).unwrap(), list);
    }

    /// Arbitrary bytes never make a decoder panic.
    #[test]
    fn decoding_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Token::decode(&bytes);
        let _ = Chain::decode(&bytes);
        let _ = RevocationList::decode(&bytes);
    }

    /// Mutated valid chains never panic the decoder or the verifier, and a mutation that
    /// still verifies did not change the grant.
    #[test]
    fn mutated_chains_never_panic_or_widen(
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<bool>(),
    ) {
        let parent = parent_token(vec!["a.>".parse().unwrap()], vec![]);
        let claims = child_claims(vec!["a.b".parse().unwrap()], vec![]);
        let child = Token::issue(claims, &sk(2), Some(&parent)).unwrap();
        let mut bytes = Chain::new(vec![child, parent]).unwrap().encode();
        let i = pos.index(bytes.len());
        if cut {
            bytes.truncate(i);
        } else {
            bytes[i] = byte;
        }
        let v = Verifier::new(vec![sk(1).public()]);
        if let Ok(grant) = v.verify_bytes(&bytes, UnixTime(T0 + 100)) {
            prop_assert_eq!(grant.node_id(), "edge-1");
            let expected: Vec<SubjectPattern> = vec!["a.b".parse().unwrap()];
            prop_assert_eq!(grant.publish(), &expected[..]);
        }
    }

    /// ACL: deny wins and default deny, against a direct reading of the rules.
    #[test]
    fn acl_deny_wins_and_default_denies(
        rules in prop::collection::vec((
            prop::sample::select(vec!["local", "edge-*", "edge-1", "*"]),
            prop::collection::vec(pattern(), 0..3),
            prop::collection::vec(pattern(), 0..3),
        ), 0..5),
        who in prop::sample::select(vec!["local", "edge-1", "edge-2", "hub-1"]),
        s in subject_tokens(),
    ) {
        let acl = Acl::new(rules.iter().map(|(p, allow, deny)| AclRule {
            principal: Principal::parse(p).unwrap(),
            allow_publish: allow.clone(),
            deny_publish: deny.clone(),
            allow_receive: vec![],
            deny_receive: vec![],
        }).collect());
        let subject = s.join(".");
        let applies: Vec<&AclRule> =
            acl.rules().iter().filter(|r| r.principal.matches(who)).collect();
        let denied = applies.iter().any(|r| r.deny_publish.iter().any(|p| p.matches(&subject)));
        let allowed = applies.iter().any(|r| r.allow_publish.iter().any(|p| p.matches(&subject)));
        let d = acl.check(who, Action::Publish, &subject);
        prop_assert_eq!(d.is_allowed(), allowed && !denied);
        if denied {
            prop_assert!(matches!(d, Decision::Deny { .. }), "{:?}", d);
        }
        if !denied && !allowed {
            prop_assert_eq!(d, Decision::NoRule);
        }
        prop_assert_eq!(acl.check(who, Action::Receive, &subject), Decision::NoRule);
    }
}
