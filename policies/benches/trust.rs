//! The trust core's hot paths: ACL checks, token chain verification (cold and cached),
//! Ed25519 signing and verification (single and batched).
//!
//! Run: `cargo bench -p nexus-policies --bench trust` (`-- --quick` for a short run).
//! Plain harness: best of 5 rounds per figure, printed as a markdown table.

use std::hint::black_box;
use std::time::{Duration, Instant};

use nexus_policies::keys::verify_batch;
use nexus_policies::token::{Chain, ChainCache, Claims, Role, Token, TokenId, Verifier};
use nexus_policies::{
    Acl, AclRule, Action, Principal, SecretKey, Signature, SubjectPattern, UnixTime,
};

fn per_op(iters: u32, mut f: impl FnMut()) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        best = best.min(start.elapsed() / iters);
    }
    best
}

fn row(name: &str, d: Duration) {
    let ns = d.as_secs_f64() * 1e9;
    println!("| {name} | {ns:.0} | {:.0} |", 1e9 / ns);
}

fn patterns(list: &[&str]) -> Vec<SubjectPattern> {
    list.iter()
        .map(|p| SubjectPattern::parse(p).expect("pattern"))
        .collect()
}

fn claims(
    id: u8,
    node: &str,
    key: &SecretKey,
    issuer: &SecretKey,
    parent: Option<TokenId>,
    role: Role,
    publish: &[&str],
) -> Claims {
    Claims {
        id: TokenId([id; 16]),
        parent,
        issuer_key: issuer.public(),
        node_id: node.into(),
        node_key: key.public(),
        tenant: Some("salon-001".into()),
        role,
        publish: patterns(publish),
        receive: Vec::new(),
        not_before: UnixTime(1_790_000_000),
        expires: UnixTime(1_900_000_000),
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 1 } else { 10 };
    let key = |n: u8| SecretKey::from_seed(&[n; 32]).expect("strong key");
    let (root, hub, member) = (key(1), key(2), key(3));

    println!("| operation | ns/op | ops/s |");
    println!("|---|---:|---:|");

    let rule = |principal: &str, allow: &[&str], deny: &[&str]| AclRule {
        principal: Principal::parse(principal).expect("principal"),
        allow_publish: patterns(allow),
        deny_publish: patterns(deny),
        allow_receive: Vec::new(),
        deny_receive: Vec::new(),
    };
    let mut rules: Vec<AclRule> = (0..8)
        .map(|n| rule(&format!("edge-{n}*"), &["nexus.salon-001.>"], &[]))
        .collect();
    rules.push(rule(
        "edge-*",
        &["nexus._core.edge.health.*", "nexus.*.iot.>"],
        &["nexus.*.iot.secret"],
    ));
    rules.push(rule("*", &[], &["nexus.*.billing.>"]));
    let acl = Acl::new(rules);
    row(
        "ACL check (10 rules, allowed)",
        per_op(20_000 * scale, || {
            black_box(acl.check(
                black_box("edge-msk-01"),
                Action::Publish,
                black_box("nexus.salon-001.iot.sensor_data"),
            ));
        }),
    );
    row(
        "ACL check (10 rules, denied)",
        per_op(20_000 * scale, || {
            black_box(acl.check(
                black_box("edge-msk-01"),
                Action::Publish,
                black_box("nexus.salon-001.billing.charged"),
            ));
        }),
    );

    let hub_token = Token::issue(
        claims(
            1,
            "hub-msk",
            &hub,
            &root,
            None,
            Role::Hub,
            &["nexus.salon-001.>", "nexus._core.>"],
        ),
        &root,
        None,
    )
    .expect("hub token");
    let member_token = Token::issue(
        claims(
            2,
            "edge-msk-01",
            &member,
            &hub,
            Some(hub_token.id()),
            Role::Member,
            &["nexus.salon-001.iot.>"],
        ),
        &hub,
        Some(&hub_token),
    )
    .expect("member token");
    let chain = Chain::new(vec![member_token, hub_token]).expect("chain");
    let verifier = Verifier::new(vec![root.public()]);
    let now = UnixTime(1_800_000_000);
    row(
        "chain verify, cold (2 tokens: decode + 2 signatures + attenuation)",
        per_op(500 * scale, || {
            let chain = Chain::decode(black_box(&chain.encode())).expect("decodes");
            black_box(verifier.verify_chain(chain.tokens(), now)).ok();
        }),
    );
    let mut cache = ChainCache::default();
    cache.verify(&verifier, &chain, now).expect("valid");
    row(
        "chain verify, cached (hit + re-check of windows and revocation)",
        per_op(20_000 * scale, || {
            black_box(cache.verify(&verifier, black_box(&chain), now)).ok();
        }),
    );

    let body = vec![0x5a_u8; 300];
    row(
        "Ed25519 sign (300-byte envelope)",
        per_op(2_000 * scale, || {
            black_box(member.sign(black_box(&body)));
        }),
    );
    let signature = member.sign(&body);
    let public = member.public();
    row(
        "Ed25519 verify_strict, single",
        per_op(2_000 * scale, || {
            black_box(public.verify(black_box(&body), &signature)).ok();
        }),
    );
    let signers: Vec<SecretKey> = (10..74).map(key).collect();
    let bodies: Vec<Vec<u8>> = (0..64u8).map(|n| vec![n; 300]).collect();
    let signatures: Vec<Signature> = signers
        .iter()
        .zip(&bodies)
        .map(|(k, b)| k.sign(b))
        .collect();
    let publics: Vec<_> = signers.iter().map(SecretKey::public).collect();
    let items: Vec<(&[u8], &Signature, &_)> = bodies
        .iter()
        .zip(&signatures)
        .zip(&publics)
        .map(|((b, s), k)| (b.as_slice(), s, k))
        .collect();
    let batch = per_op(50 * scale, || {
        black_box(verify_batch(black_box(&items))).ok();
    });
    row("Ed25519 verify, batch of 64 (per signature)", batch / 64);
}
