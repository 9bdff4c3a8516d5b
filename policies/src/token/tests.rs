//! One test (at least) per `TokenError` variant, asserting exact variants, plus
//! round trips and the cache.

use std::sync::Arc;
use std::time::Duration;

use ciborium::Value;

use super::*;
use crate::acl::Action;
use crate::clock::UnixTime;
use crate::error::{BrokenLink, TokenError};
use crate::keys::{PublicKey, SecretKey};
use crate::pattern::SubjectPattern;

const T0: i64 = 1_780_000_000;
const DAY: i64 = 86_400;

fn sk(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32]).expect("strong seed")
}

fn pats(list: &[&str]) -> Vec<SubjectPattern> {
    list.iter()
        .map(|p| p.parse().expect("valid pattern"))
        .collect()
}

fn id(n: u8) -> TokenId {
    TokenId([n; 16])
}

struct Keys {
    anchor: SecretKey,
    hub: SecretKey,
    member: SecretKey,
}

fn keys() -> Keys {
    Keys {
        anchor: sk(1),
        hub: sk(2),
        member: sk(3),
    }
}

fn hub_claims(k: &Keys) -> Claims {
    Claims {
        id: id(0x10),
        parent: None,
        issuer_key: k.anchor.public(),
        node_id: "hub-msk".into(),
        node_key: k.hub.public(),
        tenant: Some("salon-001".into()),
        role: Role::Hub,
        publish: pats(&["nexus.salon-001.>", "nexus._core.edge.health.*"]),
        receive: pats(&["_nexus.cmd.>"]),
        not_before: UnixTime(T0),
        expires: UnixTime(T0 + 30 * DAY),
    }
}

fn member_claims(k: &Keys) -> Claims {
    Claims {
        id: id(0x20),
        parent: Some(id(0x10)),
        issuer_key: k.hub.public(),
        node_id: "edge-msk-01".into(),
        node_key: k.member.public(),
        tenant: Some("salon-001".into()),
        role: Role::Member,
        publish: pats(&[
            "nexus.salon-001.iot.>",
            "nexus._core.edge.health.edge-msk-01",
        ]),
        receive: pats(&["_nexus.cmd.edge-msk-01.>"]),
        not_before: UnixTime(T0 + DAY),
        expires: UnixTime(T0 + 8 * DAY),
    }
}

fn hub_token(k: &Keys) -> Token {
    Token::issue(hub_claims(k), &k.anchor, None).expect("hub token issues")
}

fn chain(k: &Keys) -> Vec<Token> {
    let hub = hub_token(k);
    let member = Token::issue(member_claims(k), &k.hub, Some(&hub)).expect("member token issues");
    vec![member, hub]
}

fn verifier(k: &Keys) -> Verifier {
    Verifier::new(vec![k.anchor.public()])
}

const NOW: UnixTime = UnixTime(T0 + 2 * DAY);

/// Issues a member token under the standard hub with `f` applied to its claims.
fn issue_member(k: &Keys, f: impl FnOnce(&mut Claims)) -> Result<Token, TokenError> {
    let mut c = member_claims(k);
    f(&mut c);
    Token::issue(c, &k.hub, Some(&hub_token(k)))
}

/// Signs a member token without checks, under the standard hub, and verifies the chain.
fn verify_forged(k: &Keys, f: impl FnOnce(&mut Claims)) -> Result<VerifiedGrant, TokenError> {
    let mut c = member_claims(k);
    f(&mut c);
    let member = Token::sign_unchecked(c, &k.hub).expect("shape is fine");
    verifier(k).verify_chain(&[member, hub_token(k)], NOW)
}

/// Token bytes around `claims` bytes, built independently of the crate's encoder.
fn token_bytes(claims: &[u8], sig: &[u8]) -> Vec<u8> {
    let v = Value::Map(vec![
        (Value::Text("claims".into()), Value::Bytes(claims.to_vec())),
        (Value::Text("sig".into()), Value::Bytes(sig.to_vec())),
    ]);
    let mut out = Vec::new();
    ciborium::ser::into_writer(&v, &mut out).expect("encodes");
    out
}

/// The member token's claims with one field replaced, re-signed by the hub, as bytes.
fn member_with_field(k: &Keys, field: &str, value: Value) -> Vec<u8> {
    let token = &chain(k)[0];
    let mut map: Value =
        ciborium::de::from_reader(token.claims_bytes()).expect("claims are a CBOR map");
    if let Value::Map(entries) = &mut map {
        match entries
            .iter_mut()
            .find(|(key, _)| key.as_text() == Some(field))
        {
            Some(entry) => entry.1 = value,
            None => entries.push((Value::Text(field.into()), value)),
        }
    }
    let mut claims = Vec::new();
    ciborium::ser::into_writer(&map, &mut claims).expect("encodes");
    token_bytes(&claims, &k.hub.sign(&claims).to_bytes())
}

// ---- the valid path ----

#[test]
fn a_valid_chain_verifies_to_the_leaf_grant() {
    let k = keys();
    let grant = verifier(&k)
        .verify_chain(&chain(&k), NOW)
        .expect("valid chain");
    assert_eq!(grant.node_id(), "edge-msk-01");
    assert_eq!(grant.node_key(), &k.member.public());
    assert_eq!(grant.tenant(), Some("salon-001"));
    assert_eq!(grant.role(), Role::Member);
    assert_eq!(grant.anchor(), &k.anchor.public());
    assert_eq!(grant.leaf_id(), id(0x20));
    assert_eq!(
        grant.token_ids().collect::<Vec<_>>(),
        vec![id(0x20), id(0x10)]
    );
    assert_eq!(grant.expires(), UnixTime(T0 + 8 * DAY));
    assert_eq!(grant.not_before(), UnixTime(T0 + DAY));
    assert!(grant.allows_publish("nexus.salon-001.iot.sensor_data"));
    assert!(!grant.allows_publish("nexus.salon-001.booking.created"));
    assert!(grant.allows(Action::Receive, "_nexus.cmd.edge-msk-01.reboot"));
    assert!(!grant.allows_receive("_nexus.cmd.edge-msk-02.reboot"));
    assert_eq!(grant.publish().len(), 2);
    assert_eq!(grant.receive().len(), 1);
}

#[test]
fn a_single_anchor_signed_token_is_a_chain() {
    let k = keys();
    let grant = verifier(&k)
        .verify_chain(&[hub_token(&k)], NOW)
        .expect("valid");
    assert_eq!(grant.role(), Role::Hub);
}

#[test]
fn tokens_and_chains_round_trip_byte_for_byte() {
    let k = keys();
    let tokens = chain(&k);
    for t in &tokens {
        let bytes = t.encode();
        let back = Token::decode(&bytes).expect("decodes");
        assert_eq!(&back, t);
        assert_eq!(back.encode(), bytes);
        assert_eq!(
            bytes,
            token_bytes(t.claims_bytes(), &t.signature().to_bytes())
        );
    }
    let chain = Chain::new(tokens).expect("two tokens");
    let bytes = chain.encode();
    let back = Chain::decode(&bytes).expect("decodes");
    assert_eq!(back, chain);
    assert_eq!(back.key(), chain.key());
    assert_eq!(back.leaf().id(), id(0x20));
    let grant = verifier(&k).verify_bytes(&bytes, NOW).expect("valid");
    assert_eq!(grant.node_id(), "edge-msk-01");
}

#[test]
fn the_signature_covers_the_received_bytes_not_a_re_encoding() {
    // Same claims, non-minimal integer encoding of "v" (0x18 0x01 instead of 0x01):
    // a different byte string, signed as such, decodes to the same claims and verifies.
    let k = keys();
    let hub = hub_token(&k);
    let bytes = hub.claims_bytes();
    assert_eq!(&bytes[..4], &[0xac, 0x61, b'v', 0x01]);
    let mut odd = bytes[..3].to_vec();
    odd.extend_from_slice(&[0x18, 0x01]);
    odd.extend_from_slice(&bytes[4..]);
    let sig = k.anchor.sign(&odd);
    let token = Token::decode(&token_bytes(&odd, &sig.to_bytes())).expect("decodes");
    assert_eq!(token.claims(), hub.claims());
    assert_eq!(token.claims_bytes(), &odd[..]);
    assert!(verifier(&k)
        .verify_chain(std::slice::from_ref(&token), NOW)
        .is_ok());
    // The original signature does not cover the odd bytes.
    let swapped = token_bytes(&odd, &hub.signature().to_bytes());
    let swapped = Token::decode(&swapped).expect("decodes");
    assert_eq!(
        verifier(&k).verify_chain(&[swapped], NOW).err(),
        Some(TokenError::BadSignature { id: id(0x10) })
    );
}

// ---- decoding untrusted bytes ----

#[test]
fn oversized_inputs_are_refused_before_decoding() {
    let big = vec![0u8; MAX_TOKEN_BYTES + 1];
    assert_eq!(
        Token::decode(&big),
        Err(TokenError::TooLarge {
            what: "token",
            len: MAX_TOKEN_BYTES + 1,
            max: MAX_TOKEN_BYTES
        })
    );
    let big = vec![0u8; MAX_CHAIN_BYTES + 1];
    assert_eq!(
        Chain::decode(&big),
        Err(TokenError::TooLarge {
            what: "chain",
            len: MAX_CHAIN_BYTES + 1,
            max: MAX_CHAIN_BYTES
        })
    );
    let big = vec![0u8; MAX_REVOCATION_BYTES + 1];
    assert!(matches!(
        RevocationList::decode(&big),
        Err(TokenError::TooLarge { .. })
    ));
}

#[test]
fn oversized_claims_are_refused_when_issuing() {
    let k = keys();
    let mut c = hub_claims(&k);
    let long = format!("nexus.{}.>", "x".repeat(240));
    c.publish = (0..MAX_PATTERNS)
        .map(|_| long.parse().expect("valid"))
        .collect();
    c.receive = c.publish.clone();
    assert!(matches!(
        Token::issue(c, &k.anchor, None),
        Err(TokenError::TooLarge { what: "claims", .. })
    ));
}

#[test]
fn trailing_bytes_are_refused() {
    let k = keys();
    let tokens = chain(&k);
    let mut bytes = tokens[0].encode();
    bytes.push(0x00);
    assert_eq!(Token::decode(&bytes), Err(TokenError::TrailingBytes));
    let mut bytes = Chain::new(tokens.clone()).expect("ok").encode();
    bytes.push(0xf6);
    assert_eq!(Chain::decode(&bytes), Err(TokenError::TrailingBytes));
    // Trailing bytes inside the claims byte string, too.
    let mut claims = tokens[0].claims_bytes().to_vec();
    claims.push(0x00);
    let sig = k.hub.sign(&claims);
    assert_eq!(
        Token::decode(&token_bytes(&claims, &sig.to_bytes())),
        Err(TokenError::TrailingBytes)
    );
}

#[test]
fn malformed_structures_are_refused() {
    let k = keys();
    let t = &chain(&k)[0];
    for bytes in [
        vec![],
        vec![0xff],
        vec![0xa0],                                               // empty map
        token_bytes(t.claims_bytes(), &[0u8; 63]),                // short signature
        token_bytes(b"\x01", &t.signature().to_bytes()),          // claims not a map
        member_with_field(&k, "extra", Value::Integer(1.into())), // unknown key
        member_with_field(&k, "role", Value::Text("god".into())),
        member_with_field(&k, "node_key", Value::Bytes(vec![1; 31])),
        member_with_field(&k, "expires", Value::Text("never".into())),
    ] {
        assert!(
            matches!(Token::decode(&bytes), Err(TokenError::Malformed(_))),
            "{bytes:02x?}"
        );
    }
    // A chain that is not an array of token maps.
    assert!(matches!(
        Chain::decode(&[0xa0]),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn an_unknown_format_version_is_refused() {
    let k = keys();
    let bytes = member_with_field(&k, "v", Value::Integer(2.into()));
    assert_eq!(
        Token::decode(&bytes),
        Err(TokenError::UnsupportedVersion(2))
    );
}

#[test]
fn weak_keys_are_refused_in_every_key_field() {
    let k = keys();
    let mut identity = vec![0u8; 32];
    identity[0] = 1;
    for field in ["node_key", "issuer_key"] {
        let bytes = member_with_field(&k, field, Value::Bytes(identity.clone()));
        let expected = if field == "node_key" {
            "node_key"
        } else {
            "issuer_key"
        };
        assert_eq!(
            Token::decode(&bytes),
            Err(TokenError::WeakKey { field: expected })
        );
    }
}

#[test]
fn claims_out_of_shape_are_refused_when_issuing_and_decoding() {
    let k = keys();
    let field = |r: Result<Token, TokenError>| match r {
        Err(TokenError::InvalidClaims { field, .. }) => field,
        other => panic!("expected InvalidClaims, got {other:?}"),
    };
    assert_eq!(
        field(issue_member(&k, |c| c.node_id = "Edge 1".into())),
        "node_id"
    );
    assert_eq!(
        field(issue_member(&k, |c| c.node_id = "local".into())),
        "node_id"
    );
    assert_eq!(
        field(issue_member(&k, |c| c.tenant = Some("".into()))),
        "tenant"
    );
    assert_eq!(
        field(issue_member(&k, |c| c.expires = c.not_before)),
        "expires"
    );
    assert_eq!(
        field(issue_member(&k, |c| c.publish = pats(&["a.b"; MAX_PATTERNS + 1]))),
        "publish"
    );
    let bytes = member_with_field(
        &k,
        "publish",
        Value::Array(vec![Value::Text("a..b".into())]),
    );
    assert_eq!(field(Token::decode(&bytes)), "publish");
    let bytes = member_with_field(&k, "node_id", Value::Text("EDGE".into()));
    assert_eq!(field(Token::decode(&bytes)), "node_id");
}

// ---- chain structure ----

#[test]
fn empty_and_too_deep_chains_are_refused() {
    let k = keys();
    assert_eq!(
        verifier(&k).verify_chain(&[], NOW).err(),
        Some(TokenError::EmptyChain)
    );
    assert_eq!(Chain::new(vec![]), Err(TokenError::EmptyChain));
    assert_eq!(Chain::decode(&[0x80]), Err(TokenError::EmptyChain));
    let five = vec![hub_token(&k); 5];
    assert_eq!(
        verifier(&k).verify_chain(&five, NOW).err(),
        Some(TokenError::TooDeep {
            depth: 5,
            max: MAX_CHAIN_DEPTH
        })
    );
    assert_eq!(
        Chain::new(five.clone()),
        Err(TokenError::TooDeep { depth: 5, max: 4 })
    );
    let wires: Vec<Value> = five
        .iter()
        .map(|t| ciborium::de::from_reader(&t.encode()[..]).expect("map"))
        .collect();
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(&Value::Array(wires), &mut bytes).expect("encodes");
    assert_eq!(
        Chain::decode(&bytes),
        Err(TokenError::TooDeep { depth: 5, max: 4 })
    );
}

#[test]
fn a_chain_not_ending_at_a_trust_anchor_is_untrusted() {
    let k = keys();
    let stranger = sk(9);
    let mut c = hub_claims(&k);
    c.issuer_key = stranger.public();
    let hub = Token::issue(c, &stranger, None).expect("issues");
    assert_eq!(
        verifier(&k).verify_chain(&[hub], NOW).err(),
        Some(TokenError::UntrustedRoot {
            id: id(0x10),
            issuer: Box::new(stranger.public())
        })
    );
    // A member token alone: its issuer (the hub) is no anchor.
    let member = chain(&k).remove(0);
    assert_eq!(
        verifier(&k).verify_chain(&[member], NOW).err(),
        Some(TokenError::UntrustedRoot {
            id: id(0x20),
            issuer: Box::new(k.hub.public())
        })
    );
}

#[test]
fn bad_signatures_are_refused() {
    let k = keys();
    // Claiming the anchor as issuer but signed by someone else.
    let forged = Token::sign_unchecked(hub_claims(&k), &sk(9)).expect("shape ok");
    assert_eq!(
        verifier(&k).verify_chain(&[forged], NOW).err(),
        Some(TokenError::BadSignature { id: id(0x10) })
    );
    // A flipped signature bit on the member.
    let tokens = chain(&k);
    let mut sig = tokens[0].signature().to_bytes();
    sig[5] ^= 1;
    let member = Token::decode(&token_bytes(tokens[0].claims_bytes(), &sig)).expect("decodes");
    assert_eq!(
        verifier(&k)
            .verify_chain(&[member, tokens[1].clone()], NOW)
            .err(),
        Some(TokenError::BadSignature { id: id(0x20) })
    );
    assert_eq!(tokens[0].verify_signature(), Ok(()));
}

#[test]
fn broken_links_are_named() {
    let k = keys();
    let broken = |reason| {
        Some(TokenError::BrokenChain {
            id: id(0x20),
            reason,
        })
    };
    // Issued by a key that is not the parent's node key.
    let v = verify_forged(&k, |c| c.issuer_key = sk(9).public());
    assert_eq!(v.err(), broken(BrokenLink::IssuerKey));
    // Naming another parent.
    assert_eq!(
        verify_forged(&k, |c| c.parent = Some(id(0x11))).err(),
        broken(BrokenLink::ParentId)
    );
    // Naming no parent below the top.
    assert_eq!(
        verify_forged(&k, |c| c.parent = None).err(),
        broken(BrokenLink::UnexpectedParent)
    );
    // The top token names a parent the chain does not have.
    let mut c = hub_claims(&k);
    c.parent = Some(id(0x01));
    let top = Token::sign_unchecked(c, &k.anchor).expect("shape ok");
    assert_eq!(
        verifier(&k).verify_chain(&[top], NOW).err(),
        Some(TokenError::BrokenChain {
            id: id(0x10),
            reason: BrokenLink::MissingParent
        })
    );
    // Leaf and parent in the wrong order.
    let mut tokens = chain(&k);
    tokens.reverse();
    assert!(matches!(
        verifier(&k).verify_chain(&tokens, NOW),
        Err(TokenError::UntrustedRoot { .. })
    ));
}

#[test]
fn issuing_refuses_broken_links() {
    let k = keys();
    let hub = hub_token(&k);
    // Signing key is not the claimed issuer key.
    assert_eq!(
        Token::issue(member_claims(&k), &sk(9), Some(&hub)).err(),
        Some(TokenError::BrokenChain {
            id: id(0x20),
            reason: BrokenLink::IssuerKey
        })
    );
    // Claims name a parent but none is given.
    assert_eq!(
        Token::issue(member_claims(&k), &k.hub, None).err(),
        Some(TokenError::BrokenChain {
            id: id(0x20),
            reason: BrokenLink::MissingParent
        })
    );
    assert_eq!(
        issue_member(&k, |c| c.parent = Some(id(0x11))).err(),
        Some(TokenError::BrokenChain {
            id: id(0x20),
            reason: BrokenLink::ParentId
        })
    );
}

// ---- attenuation ----

#[test]
fn over_reaching_children_are_refused_naming_the_pattern() {
    let k = keys();
    let expected = |action, p: &str| {
        Some(TokenError::OverReaching {
            id: id(0x20),
            action,
            pattern: p.parse().expect("valid"),
        })
    };
    let wider = |c: &mut Claims| c.publish.push("nexus.salon-002.>".parse().expect("valid"));
    assert_eq!(
        issue_member(&k, wider).err(),
        expected(Action::Publish, "nexus.salon-002.>")
    );
    assert_eq!(
        verify_forged(&k, wider).err(),
        expected(Action::Publish, "nexus.salon-002.>")
    );
    // A `>` under a `*`-grant over-reaches.
    let star = |c: &mut Claims| c.publish = pats(&["nexus._core.edge.health.>"]);
    assert_eq!(
        issue_member(&k, star).err(),
        expected(Action::Publish, "nexus._core.edge.health.>")
    );
    // Receive patterns are checked against receive grants only.
    let cross = |c: &mut Claims| c.receive = pats(&["nexus.salon-001.iot.x"]);
    assert_eq!(
        issue_member(&k, cross).err(),
        expected(Action::Receive, "nexus.salon-001.iot.x")
    );
    assert_eq!(
        verify_forged(&k, cross).err(),
        expected(Action::Receive, "nexus.salon-001.iot.x")
    );
}

#[test]
fn a_child_stays_in_its_parents_tenant() {
    let k = keys();
    let other = |c: &mut Claims| c.tenant = Some("salon-002".into());
    let expected = Some(TokenError::TenantMismatch {
        id: id(0x20),
        parent: "salon-001".into(),
        child: Some("salon-002".into()),
    });
    assert_eq!(issue_member(&k, other).err(), expected);
    assert_eq!(verify_forged(&k, other).err(), expected);
    let none = |c: &mut Claims| c.tenant = None;
    assert_eq!(
        issue_member(&k, none).err(),
        Some(TokenError::TenantMismatch {
            id: id(0x20),
            parent: "salon-001".into(),
            child: None
        })
    );
    // A parent with no tenant may bind its child to one.
    let mut hub = hub_claims(&k);
    hub.tenant = None;
    let hub = Token::issue(hub, &k.anchor, None).expect("issues");
    assert!(Token::issue(member_claims(&k), &k.hub, Some(&hub)).is_ok());
}

#[test]
fn roles_never_escalate_and_members_issue_nothing() {
    let k = keys();
    let mut root_like = member_claims(&k);
    root_like.role = Role::Root;
    assert_eq!(
        Token::issue(root_like, &k.hub, Some(&hub_token(&k))).err(),
        Some(TokenError::RoleEscalation {
            id: id(0x20),
            parent: Role::Hub,
            child: Role::Root
        })
    );
    let member = chain(&k).remove(0);
    let grandchild = Claims {
        id: id(0x30),
        parent: Some(id(0x20)),
        issuer_key: k.member.public(),
        node_id: "edge-msk-02".into(),
        node_key: sk(4).public(),
        ..member_claims(&k)
    };
    assert_eq!(
        Token::issue(grandchild.clone(), &k.member, Some(&member)).err(),
        Some(TokenError::RoleEscalation {
            id: id(0x30),
            parent: Role::Member,
            child: Role::Member
        })
    );
    let forged = Token::sign_unchecked(grandchild, &k.member).expect("shape ok");
    assert_eq!(
        verifier(&k)
            .verify_chain(&[forged, member, hub_token(&k)], NOW)
            .err(),
        Some(TokenError::RoleEscalation {
            id: id(0x30),
            parent: Role::Member,
            child: Role::Member
        })
    );
}

#[test]
fn a_child_window_must_lie_inside_its_parents() {
    let k = keys();
    let late = |c: &mut Claims| c.expires = UnixTime(T0 + 31 * DAY);
    assert_eq!(
        issue_member(&k, late).err(),
        Some(TokenError::WiderWindow { id: id(0x20) })
    );
    assert_eq!(
        verify_forged(&k, late).err(),
        Some(TokenError::WiderWindow { id: id(0x20) })
    );
    let early = |c: &mut Claims| c.not_before = UnixTime(T0 - 1);
    assert_eq!(
        issue_member(&k, early).err(),
        Some(TokenError::WiderWindow { id: id(0x20) })
    );
}

// ---- time and revocation ----

#[test]
fn validity_windows_are_checked_with_skew() {
    let k = keys();
    let v = verifier(&k);
    let tokens = chain(&k);
    let nb = T0 + DAY;
    let exp = T0 + 8 * DAY;
    // Inside the skew on both ends.
    assert!(v.verify_chain(&tokens, UnixTime(nb - 60)).is_ok());
    assert!(v.verify_chain(&tokens, UnixTime(exp + 59)).is_ok());
    assert_eq!(
        v.verify_chain(&tokens, UnixTime(nb - 61)).err(),
        Some(TokenError::NotYetValid {
            id: id(0x20),
            not_before: nb,
            now: nb - 61
        })
    );
    assert_eq!(
        v.verify_chain(&tokens, UnixTime(exp + 60)).err(),
        Some(TokenError::Expired {
            id: id(0x20),
            expires: exp,
            now: exp + 60
        })
    );
    // The highest failing token is named: the hub has expired too.
    let late = T0 + 40 * DAY;
    assert_eq!(
        v.verify_chain(&tokens, UnixTime(late)).err(),
        Some(TokenError::Expired {
            id: id(0x10),
            expires: T0 + 30 * DAY,
            now: late
        })
    );
    let strict = Verifier {
        skew: Duration::ZERO,
        ..verifier(&k)
    };
    assert!(matches!(
        strict.verify_chain(&tokens, UnixTime(exp)),
        Err(TokenError::Expired { .. })
    ));
    assert!(strict.verify_chain(&tokens, UnixTime(nb)).is_ok());
}

#[test]
fn revoked_tokens_are_refused_anywhere_in_the_chain() {
    let k = keys();
    let tokens = chain(&k);
    for revoked in [id(0x20), id(0x10)] {
        let v = Verifier {
            revoked: [revoked].into_iter().collect(),
            ..verifier(&k)
        };
        assert_eq!(
            v.verify_chain(&tokens, NOW).err(),
            Some(TokenError::Revoked { id: revoked })
        );
    }
}

#[test]
fn revocation_lists_round_trip_and_verify_against_anchors() {
    let k = keys();
    let list =
        RevocationList::issue(vec![id(0x20), id(0x21)], UnixTime(T0), &k.anchor).expect("issues");
    let bytes = list.encode();
    let back = RevocationList::decode(&bytes).expect("decodes");
    assert_eq!(back, list);
    assert_eq!(back.encode(), bytes);
    assert_eq!(back.issued_at(), UnixTime(T0));
    assert_eq!(back.issuer_key(), &k.anchor.public());
    assert_eq!(back.ids(), &[id(0x20), id(0x21)]);
    let set = back.verify(&[k.anchor.public()]).expect("anchor signed it");
    assert!(set.contains(&id(0x21)) && set.len() == 2 && !set.is_empty());
    // Signed by a hub: not a trust anchor.
    let by_hub = RevocationList::issue(vec![id(1)], UnixTime(T0), &k.hub).expect("issues");
    assert_eq!(
        by_hub.verify(&[k.anchor.public()]),
        Err(TokenError::UntrustedRevocationList {
            issuer: Box::new(k.hub.public())
        })
    );
    // A tampered signature.
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let tampered = RevocationList::decode(&tampered).expect("decodes");
    assert_eq!(
        tampered.verify(&[k.anchor.public()]),
        Err(TokenError::RevocationListBadSignature)
    );
    let mut trailing = bytes;
    trailing.push(0);
    assert_eq!(
        RevocationList::decode(&trailing),
        Err(TokenError::TrailingBytes)
    );
    assert!(RevocationList::issue(vec![id(1); 9000], UnixTime(T0), &k.anchor).is_err());
}

// ---- the cache ----

#[test]
fn a_chain_is_verified_once_then_served_from_the_cache() {
    let k = keys();
    let v = verifier(&k);
    let chain = Chain::new(chain(&k)).expect("ok");
    let mut cache = ChainCache::new(8);
    let first = cache.verify(&v, &chain, NOW).expect("valid");
    assert!(cache.contains(&chain));
    let second = cache.verify(&v, &chain, NOW).expect("valid");
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(cache.len(), 1);
    // Failures are not cached.
    let bad = Chain::new(vec![chain.leaf().clone()]).expect("ok");
    assert!(cache.verify(&v, &bad, NOW).is_err());
    assert_eq!(cache.len(), 1);
}

#[test]
fn cached_grants_end_with_revocation_expiry_and_anchor_rotation() {
    let k = keys();
    let chain = Chain::new(chain(&k)).expect("ok");
    let mut cache = ChainCache::default();
    let v = verifier(&k);
    cache.verify(&v, &chain, NOW).expect("valid");
    // Revocation: refused on the next hit even before invalidation, and dropped.
    let revoked = Verifier {
        revoked: [id(0x10)].into_iter().collect(),
        ..verifier(&k)
    };
    assert_eq!(
        cache.verify(&revoked, &chain, NOW).err(),
        Some(TokenError::Revoked { id: id(0x10) })
    );
    assert!(cache.is_empty());
    // invalidate_revoked frees entries at once.
    cache.verify(&v, &chain, NOW).expect("valid");
    assert_eq!(cache.invalidate_revoked(&revoked.revoked), 1);
    assert!(cache.is_empty());
    // Expiry of the earliest token in the chain.
    cache.verify(&v, &chain, NOW).expect("valid");
    let later = UnixTime(T0 + 9 * DAY);
    assert!(matches!(
        cache.verify(&v, &chain, later),
        Err(TokenError::Expired { .. })
    ));
    assert!(cache.is_empty());
    // Anchor rotated away.
    cache.verify(&v, &chain, NOW).expect("valid");
    let rotated = Verifier::new(vec![sk(8).public()]);
    assert_eq!(
        cache.verify(&rotated, &chain, NOW).err(),
        Some(TokenError::UntrustedRoot {
            id: id(0x10),
            issuer: Box::new(k.anchor.public())
        })
    );
    assert!(cache.is_empty());
    cache.verify(&v, &chain, NOW).expect("valid");
    cache.clear();
    assert!(cache.is_empty());
}

#[test]
fn the_cache_is_bounded_and_evicts_expired_then_least_recently_used() {
    let k = keys();
    let v = verifier(&k);
    let hub = hub_token(&k);
    let member = |n: u8, days: i64| {
        let mut c = member_claims(&k);
        c.id = id(n);
        c.expires = UnixTime(T0 + days * DAY);
        let leaf = Token::issue(c, &k.hub, Some(&hub)).expect("issues");
        Chain::new(vec![leaf, hub.clone()]).expect("ok")
    };
    let mut cache = ChainCache::new(2);
    let (a, b, c) = (member(1, 3), member(2, 9), member(3, 9));
    cache.verify(&v, &a, NOW).expect("valid");
    cache.verify(&v, &b, NOW).expect("valid");
    cache.verify(&v, &a, NOW).expect("valid"); // a is now the most recently used
    cache.verify(&v, &c, NOW).expect("valid"); // evicts b
    assert_eq!(cache.len(), 2);
    assert!(cache.contains(&a) && cache.contains(&c) && !cache.contains(&b));
    // Later, a has expired: it goes first even though it was used last.
    let later = UnixTime(T0 + 5 * DAY);
    cache.verify(&v, &c, later).expect("valid");
    cache.verify(&v, &b, later).expect("valid");
    assert!(cache.contains(&b) && cache.contains(&c) && !cache.contains(&a));
}

#[test]
fn public_keys_in_claims_are_the_ones_given() {
    // Guards the field order of the wire map against accidental swaps.
    let k = keys();
    let t = Token::decode(&chain(&k)[0].encode()).expect("decodes");
    assert_eq!(t.claims().issuer_key, k.hub.public());
    assert_eq!(t.claims().node_key, k.member.public());
    let _unused: Option<PublicKey> = None;
}
