//! Golden vectors: fixed tokens, chains and a revocation list from fixed seeds and fixed
//! times, checked in under `tests/vectors/`, so that any change of the wire format shows
//! up in review as a diff of those files.
//!
//! Each test run regenerates every vector and compares it with the checked-in file, and
//! decodes and verifies the checked-in bytes against the expectation written in the file.
//! After an intended format change: `NEXUS_REGEN_VECTORS=1 cargo test -p nexus-policies
//! --test vectors`, then review the diff.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use nexus_policies::token::{Chain, Claims, RevocationList, Role, Token, TokenId, Verifier};
use nexus_policies::{PublicKey, SecretKey, SubjectPattern, UnixTime};

/// 2026-06-01T00:00:00Z.
const T0: i64 = 1_780_272_000;
const DAY: i64 = 86_400;
/// The time every chain vector is verified at.
const NOW: UnixTime = UnixTime(T0 + 2 * DAY);

fn sk(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32]).unwrap()
}

fn anchor() -> SecretKey {
    sk(0xa1)
}
fn hub() -> SecretKey {
    sk(0xb2)
}
fn member() -> SecretKey {
    sk(0xc3)
}

fn pats(list: &[&str]) -> Vec<SubjectPattern> {
    list.iter().map(|p| p.parse().unwrap()).collect()
}

const HUB_ID: TokenId = TokenId(*b"hub-token-000001");
const MEMBER_ID: TokenId = TokenId(*b"mbr-token-000001");

fn hub_claims() -> Claims {
    Claims {
        id: HUB_ID,
        parent: None,
        issuer_key: anchor().public(),
        node_id: "hub-msk".into(),
        node_key: hub().public(),
        tenant: Some("salon-001".into()),
        role: Role::Hub,
        publish: pats(&["nexus.salon-001.>", "nexus._core.edge.health.*"]),
        receive: pats(&["_nexus.cmd.>"]),
        not_before: UnixTime(T0),
        expires: UnixTime(T0 + 30 * DAY),
    }
}

fn member_claims() -> Claims {
    Claims {
        id: MEMBER_ID,
        parent: Some(HUB_ID),
        issuer_key: hub().public(),
        node_id: "edge-msk-01".into(),
        node_key: member().public(),
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

fn hub_token() -> Token {
    Token::issue(hub_claims(), &anchor(), None).unwrap()
}

/// A chain of a member token (claims edited by `f`, signed without checks) under the hub.
fn member_chain(f: impl FnOnce(&mut Claims)) -> Vec<u8> {
    let mut c = member_claims();
    f(&mut c);
    let leaf = Token::sign_unchecked(c, &hub()).unwrap();
    Chain::new(vec![leaf, hub_token()]).unwrap().encode()
}

enum Kind {
    Token,
    Chain,
    Revocation,
}

struct Case {
    name: &'static str,
    about: &'static str,
    kind: Kind,
    bytes: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let valid = member_chain(|_| {});
    let bad_sig = {
        // The token map ends with the 64 signature bytes: flip one bit of them.
        let mut bytes = Token::sign_unchecked(member_claims(), &hub())
            .unwrap()
            .encode();
        let first_sig_byte = bytes.len() - 64;
        bytes[first_sig_byte] ^= 0x01;
        let leaf = Token::decode(&bytes).unwrap();
        Chain::new(vec![leaf, hub_token()]).unwrap().encode()
    };
    let stranger = sk(0xd4);
    let untrusted = {
        let mut c = hub_claims();
        c.issuer_key = stranger.public();
        Chain::new(vec![Token::issue(c, &stranger, None).unwrap()])
            .unwrap()
            .encode()
    };
    let mut trailing = valid.clone();
    trailing.push(0x00);
    vec![
        Case {
            name: "hub_token",
            about: "a hub token issued by the trust anchor (one token, not a chain)",
            kind: Kind::Token,
            bytes: hub_token().encode(),
        },
        Case {
            name: "valid_chain",
            about: "member token under the hub token: verifies",
            kind: Kind::Chain,
            bytes: valid,
        },
        Case {
            name: "expired",
            about: "the member token expired a day before `now`",
            kind: Kind::Chain,
            bytes: member_chain(|c| {
                c.not_before = UnixTime(T0);
                c.expires = UnixTime(NOW.0 - DAY);
            }),
        },
        Case {
            name: "not_yet_valid",
            about: "the member token starts a day after `now`",
            kind: Kind::Chain,
            bytes: member_chain(|c| c.not_before = UnixTime(NOW.0 + DAY)),
        },
        Case {
            name: "over_reaching",
            about: "the member grants itself another tenant's subjects",
            kind: Kind::Chain,
            bytes: member_chain(|c| c.publish.push("nexus.salon-002.>".parse().unwrap())),
        },
        Case {
            name: "tenant_mismatch",
            about: "the member names another tenant than its hub's",
            kind: Kind::Chain,
            bytes: member_chain(|c| c.tenant = Some("salon-002".into())),
        },
        Case {
            name: "broken_parent",
            about: "the member names a parent id that is not the hub token's",
            kind: Kind::Chain,
            bytes: member_chain(|c| c.parent = Some(TokenId([0; 16]))),
        },
        Case {
            name: "bad_signature",
            about: "one bit of the member's signature flipped",
            kind: Kind::Chain,
            bytes: bad_sig,
        },
        Case {
            name: "untrusted_root",
            about: "the hub token is signed by a key that is not the trust anchor",
            kind: Kind::Chain,
            bytes: untrusted,
        },
        Case {
            name: "trailing_bytes",
            about: "the valid chain followed by one zero byte",
            kind: Kind::Chain,
            bytes: trailing,
        },
        Case {
            name: "revocation_list",
            about: "the anchor revokes the member token; verifying valid_chain with it fails",
            kind: Kind::Revocation,
            bytes: RevocationList::issue(vec![MEMBER_ID], UnixTime(T0 + DAY), &anchor())
                .unwrap()
                .encode(),
        },
    ]
}

fn anchors() -> Vec<PublicKey> {
    vec![anchor().public()]
}

/// What the checked-in bytes of a case do, as one line.
fn outcome(kind: &Kind, bytes: &[u8]) -> String {
    let verifier = Verifier::new(anchors());
    match kind {
        Kind::Token => match Token::decode(bytes) {
            Ok(t) => format!("Ok(token {} for {})", t.id(), t.claims().node_id),
            Err(e) => format!("Err({e:?})"),
        },
        Kind::Chain => match verifier.verify_bytes(bytes, NOW) {
            Ok(g) => format!(
                "Ok(node {} role {} tenant {:?} publish {:?} receive {:?} expires {})",
                g.node_id(),
                g.role(),
                g.tenant(),
                g.publish().iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                g.receive().iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                g.expires(),
            ),
            Err(e) => format!("Err({e:?})"),
        },
        Kind::Revocation => {
            let set = match RevocationList::decode(bytes).and_then(|l| l.verify(&anchors())) {
                Ok(set) => set,
                Err(e) => return format!("Err({e:?})"),
            };
            let valid = cases()
                .into_iter()
                .find(|c| c.name == "valid_chain")
                .unwrap();
            let v = Verifier {
                revoked: set,
                ..verifier
            };
            match v.verify_bytes(&valid.bytes, NOW) {
                Ok(_) => "valid_chain still verifies".to_string(),
                Err(e) => format!("valid_chain: Err({e:?})"),
            }
        }
    }
}

fn render(case: &Case) -> String {
    let kind = match case.kind {
        Kind::Token => "token",
        Kind::Chain => "chain",
        Kind::Revocation => "revocation list",
    };
    let mut out = format!(
        "# {}: {}\n# kind: {kind}\n# anchor: {}\n# now: {}\n# expect: {}\n",
        case.name,
        case.about,
        anchor().public(),
        NOW,
        outcome(&case.kind, &case.bytes),
    );
    let hex: String = case.bytes.iter().map(|b| format!("{b:02x}")).collect();
    for line in hex.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out
}

fn parse_hex(text: &str) -> Vec<u8> {
    let hex: String = text.lines().filter(|l| !l.starts_with('#')).collect();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// The checked-in vectors are exactly what the code generates today.
#[test]
fn golden_vectors_match_what_the_code_generates() {
    let regen = std::env::var_os("NEXUS_REGEN_VECTORS").is_some();
    let mut stale = Vec::new();
    for case in cases() {
        let path = dir().join(format!("{}.hex", case.name));
        let want = render(&case);
        if regen {
            std::fs::write(&path, &want).unwrap();
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            stale.push(case.name);
        }
    }
    assert!(
        stale.is_empty(),
        "golden vectors differ from the code: {stale:?}; if the format change is intended, \
         run NEXUS_REGEN_VECTORS=1 cargo test -p nexus-policies --test vectors and review the diff"
    );
}

/// The checked-in bytes decode and verify to the outcome written in each file, and the
/// named invalid cases fail for their named reason.
#[test]
fn checked_in_vectors_decode_to_their_stated_outcome() {
    if std::env::var_os("NEXUS_REGEN_VECTORS").is_some() {
        return; // the files are being rewritten by the other test
    }
    for case in cases() {
        let text = std::fs::read_to_string(dir().join(format!("{}.hex", case.name))).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap()
            .to_string();
        assert_eq!(
            outcome(&case.kind, &parse_hex(&text)),
            expect,
            "{}",
            case.name
        );
        let reason = match case.name {
            "hub_token" | "valid_chain" => "Ok(",
            "expired" => "Err(Expired",
            "not_yet_valid" => "Err(NotYetValid",
            "over_reaching" => "Err(OverReaching",
            "tenant_mismatch" => "Err(TenantMismatch",
            "broken_parent" => "Err(BrokenChain",
            "bad_signature" => "Err(BadSignature",
            "untrusted_root" => "Err(UntrustedRoot",
            "trailing_bytes" => "Err(TrailingBytes",
            "revocation_list" => "valid_chain: Err(Revoked",
            other => panic!("unnamed vector {other}"),
        };
        assert!(expect.starts_with(reason), "{}: {expect}", case.name);
    }
}
