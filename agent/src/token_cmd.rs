//! `nexus-agent token …`: issue, inspect and verify capability token chains.
//!
//! A token file holds a chain, CBOR, leaf first: `[token, parent token, …, top token]`
//! (the byte layout is documented in `nexus_policies::token`). `issue` writes the new
//! token in front of its parent's chain, so the file is all a node needs to present.
//!
//! Tokens carry no secrets, but the files next to them do: whatever reads a file here
//! refuses a secret key file by its prefix and never prints its contents.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use nexus_federation::subject::ingress_subject;
use nexus_federation::{Encoding, Envelope, NatsProvenance as _, SignedEvent};
use nexus_policies::keys::{PUBLIC_KEY_PREFIX, SECRET_KEY_PREFIX};
use nexus_policies::token::{MAX_CHAIN_BYTES, MAX_CHAIN_DEPTH};
use nexus_policies::{
    Chain, Claims, PublicKey, SecretKey, SubjectPattern, Token, TokenError, TokenId, UnixTime,
    Verifier,
};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::cli::parse::PublicKeyArg;
use crate::cli::{IssueArgs, TokenCommand};
use crate::keygen::load_secret;

/// The audit event recorded by `issue --server`.
pub const AUDIT_EVENT: &str = "audit.cap_token_issued";
/// How long `issue --server` waits for the server (connect + JetStream ack).
const AUDIT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest public key file read (one line).
const PUBLIC_FILE_MAX_BYTES: u64 = 4096;

/// Runs one `token` subcommand.
pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Issue(args) => issue(&args),
        TokenCommand::Inspect { file } => inspect(&file),
        TokenCommand::Verify { file, trust, at } => verify(&file, &trust, at),
        TokenCommand::Revoke {
            key,
            ids,
            server,
            out,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(crate::revoke::revoke(
                &key,
                &ids,
                server.as_deref(),
                out.as_deref(),
            )),
    }
}

// ---- issue ----------------------------------------------------------------------------

fn issue(args: &IssueArgs) -> anyhow::Result<()> {
    // Everything that can be refused is checked before anything is written.
    if !args.force && args.out.exists() {
        bail!(
            "{} already exists; pass --force to replace it",
            args.out.display()
        );
    }
    let now = now_secs();
    let not_before = args.not_before.map_or(now, OffsetDateTime::unix_timestamp);
    let expires = i64::try_from(args.ttl.duration.as_secs())
        .ok()
        .and_then(|ttl| not_before.checked_add(ttl))
        .ok_or_else(|| anyhow!("--ttl {} is too long", args.ttl))?;
    let node_key = load_public("--node-key", &args.node_key)?;
    let issuer = load_secret(&args.key)?;
    let parent = args.parent.as_deref().map(read_chain).transpose()?;
    let mut capped = None;
    if let (Some(path), Some(chain)) = (&args.parent, &parent) {
        check_parent(path, chain, &issuer, now, not_before)?;
        // A child lives inside its parent's window: a --ttl reaching past the parent's
        // expiry (as the default does for any parent younger than 30 days) is capped.
        let parent_expires = chain.leaf().claims().expires.0;
        if expires > parent_expires {
            capped = Some(expires);
        }
    }
    let expires = match (&parent, capped) {
        (Some(chain), Some(_)) => chain.leaf().claims().expires.0,
        _ => expires,
    };

    let claims = Claims {
        id: new_token_id()?,
        parent: parent.as_ref().map(|chain| chain.leaf().id()),
        issuer_key: issuer.public(),
        node_id: args.node.clone(),
        node_key,
        tenant: args.tenant.clone(),
        role: args.role.into(),
        publish: args.publish.clone(),
        receive: args.receive.clone(),
        not_before: UnixTime(not_before),
        expires: UnixTime(expires),
    };
    let token = Token::issue(claims, &issuer, parent.as_ref().map(Chain::leaf))
        .map_err(|error| refusal(error, parent.as_ref()))?;
    let mut tokens = vec![token.clone()];
    tokens.extend(
        parent
            .iter()
            .flat_map(|chain| chain.tokens().iter().cloned()),
    );
    let depth = tokens.len();
    let chain = Chain::new(tokens).map_err(|e| anyhow!("cannot build the chain: {e}"))?;
    crate::keygen::write_atomically(&args.out, &chain.encode(), 0o644)?;

    eprintln!("{}", summary(&token, depth, &args.out, &args.ttl));
    if let Some(requested) = capped {
        eprintln!(
            "Note: --ttl {} would have ended at {}, after the parent token's expiry: the token \
             expires with its parent, at {}.",
            args.ttl,
            rfc3339(requested),
            rfc3339(expires)
        );
    }
    println!("{}", token.id());

    if let Some(server) = &args.server {
        record_audit(server, &args.issuer_id, &issuer, &token).with_context(|| {
            format!(
                "the token was written to {}, but its audit event was not recorded",
                args.out.display()
            )
        })?;
    }
    Ok(())
}

/// What `Token::issue` would refuse with a less helpful error: the wrong issuer key, a full
/// chain, an expired parent, a start before the parent's.
fn check_parent(
    path: &Path,
    chain: &Chain,
    issuer: &SecretKey,
    now: i64,
    not_before: i64,
) -> anyhow::Result<()> {
    let parent = chain.leaf().claims();
    if parent.node_key != issuer.public() {
        bail!(
            "--key is not the key {} was issued to: the parent token is for node `{}` with key \
             {}, and --key is {}; sign with that node's key",
            path.display(),
            parent.node_id,
            parent.node_key,
            issuer.public()
        );
    }
    if chain.tokens().len() >= MAX_CHAIN_DEPTH {
        bail!(
            "{} already holds {} tokens: a chain holds at most {MAX_CHAIN_DEPTH}, so this \
             token cannot issue more",
            path.display(),
            chain.tokens().len()
        );
    }
    if parent.expires.0 <= now {
        bail!(
            "the parent token {} expired {} ({}): renew it first",
            parent.id,
            rfc3339(parent.expires.0),
            relative(now - parent.expires.0, "ago")
        );
    }
    if not_before < parent.not_before.0 {
        bail!(
            "the token would start at {}, before the parent token's not_before {}: a token is \
             valid only inside its parent's window (pass a later --not-before)",
            rfc3339(not_before),
            rfc3339(parent.not_before.0)
        );
    }
    if not_before >= parent.expires.0 {
        bail!(
            "the token would start at {}, when the parent token has expired ({})",
            rfc3339(not_before),
            rfc3339(parent.expires.0)
        );
    }
    Ok(())
}

/// `Token::issue`'s refusal in an operator's words, naming what the parent does not grant.
fn refusal(error: TokenError, parent: Option<&Chain>) -> anyhow::Error {
    let parent = parent.map(|chain| chain.leaf().claims());
    match (&error, parent) {
        (
            TokenError::OverReaching {
                action, pattern, ..
            },
            Some(parent),
        ) => {
            let granted = match action {
                nexus_policies::Action::Publish => &parent.publish,
                nexus_policies::Action::Receive => &parent.receive,
            };
            anyhow!(
                "refused: the parent token does not grant {action} `{pattern}` (it grants \
                 {action}: {}); a token can only grant what its parent holds",
                list(granted)
            )
        }
        (TokenError::TenantMismatch { parent: tenant, .. }, Some(_)) => anyhow!(
            "refused: the parent token is bound to tenant `{tenant}`; pass --tenant {tenant}"
        ),
        (TokenError::RoleEscalation { parent, child, .. }, _) => {
            anyhow!("refused: a {parent} token cannot issue a {child} token")
        }
        _ => anyhow!("cannot issue the token: {error}"),
    }
}

/// The one-paragraph summary printed on stderr.
fn summary(token: &Token, depth: usize, out: &Path, ttl: &crate::cli::parse::Ttl) -> String {
    let c = token.claims();
    let tenant = c
        .tenant
        .as_deref()
        .map_or_else(|| "no tenant".to_owned(), |t| format!("tenant {t}"));
    let origin = match c.parent {
        Some(parent) => format!("under parent token {parent}"),
        None => format!(
            "as a top token: it verifies where the issuer key {} is in trust.root_keys",
            c.issuer_key
        ),
    };
    format!(
        "Issued token {} for node {} ({}, {tenant}): publish {}; receive {}; valid from {} \
         until {} (--ttl {ttl}). Wrote a chain of {depth} token(s) to {}, {origin}.",
        c.id,
        c.node_id,
        c.role,
        list(&c.publish),
        list(&c.receive),
        rfc3339(c.not_before.0),
        rfc3339(c.expires.0),
        out.display()
    )
}

/// Publishes the `audit.cap_token_issued` event on the server's ingress and waits for the
/// JetStream ack, all within [`AUDIT_TIMEOUT`].
fn record_audit(
    server: &str,
    issuer_id: &str,
    issuer: &SecretKey,
    token: &Token,
) -> anyhow::Result<()> {
    let event = audit_event(issuer_id, issuer, token)?;
    let shown = nexus_config::redact_url(server);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let ack = runtime.block_on(async {
        tokio::time::timeout(AUDIT_TIMEOUT, publish(server, &event))
            .await
            .map_err(|_| {
                anyhow!(
                    "{shown} did not acknowledge it within {}s (is a stream capturing \
                     `_nexus.ingress.>` there?)",
                    AUDIT_TIMEOUT.as_secs()
                )
            })?
    })?;
    eprintln!(
        "Recorded nexus._core.{AUDIT_EVENT} (event {}) on {shown}: stream {}, sequence {}.",
        event.event_id, ack.stream, ack.sequence
    );
    Ok(())
}

/// The sealed audit event: who got which grants, never a secret.
fn audit_event(issuer_id: &str, issuer: &SecretKey, token: &Token) -> anyhow::Result<SignedEvent> {
    let c = token.claims();
    let patterns = |list: &[SubjectPattern]| -> serde_json::Value {
        list.iter().map(|p| p.as_str().to_owned()).collect()
    };
    let mut payload = serde_json::Map::new();
    payload.insert("token_id".into(), c.id.to_string().into());
    payload.insert("node_id".into(), c.node_id.clone().into());
    payload.insert("node_key".into(), c.node_key.to_string().into());
    payload.insert("issuer_key".into(), c.issuer_key.to_string().into());
    payload.insert("tenant".into(), c.tenant.clone().into());
    payload.insert("role".into(), c.role.to_string().into());
    payload.insert("publish".into(), patterns(&c.publish));
    payload.insert("receive".into(), patterns(&c.receive));
    payload.insert("not_before".into(), rfc3339(c.not_before.0).into());
    payload.insert("expires".into(), rfc3339(c.expires.0).into());
    payload.insert("parent".into(), c.parent.map(|p| p.to_string()).into());
    let envelope = Envelope::new(
        AUDIT_EVENT,
        issuer_id,
        None,
        payload,
        OffsetDateTime::now_utc(),
    );
    SignedEvent::seal(&envelope, Encoding::Json, issuer)
        .map_err(|e| anyhow!("cannot build the audit event: {e}"))
}

async fn publish(
    server: &str,
    event: &SignedEvent,
) -> anyhow::Result<async_nats::jetstream::publish::PublishAck> {
    let shown = nexus_config::redact_url(server);
    let client = async_nats::ConnectOptions::new()
        .name("nexus-agent token issue")
        .connection_timeout(AUDIT_TIMEOUT)
        .connect(server)
        .await
        .with_context(|| format!("cannot connect to {shown}"))?;
    let jetstream = async_nats::jetstream::new(client);
    let subject = ingress_subject(&event.subject);
    let ack = jetstream
        .publish_with_headers(subject.clone(), event.headers(), event.body.clone())
        .await
        .with_context(|| format!("cannot publish on `{subject}` at {shown}"))?
        .await
        .with_context(|| format!("{shown} did not store the event published on `{subject}`"))?;
    Ok(ack)
}

// ---- inspect --------------------------------------------------------------------------

fn inspect(file: &Path) -> anyhow::Result<()> {
    let chain = read_chain(file)?;
    let now = now_secs();
    let count = chain.tokens().len();
    let mut out = String::new();
    for (index, token) in chain.tokens().iter().enumerate() {
        let position = match (index, count) {
            (0, 1) => "the only one: leaf and top",
            (0, _) => "leaf: the node presenting the chain",
            (i, n) if i + 1 == n => "top: signed by a trust anchor",
            _ => "intermediate",
        };
        out.push_str(&describe(token, index + 1, count, position, now));
        out.push('\n');
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.trim_end().as_bytes())
        .and_then(|()| stdout.write_all(b"\n"))
        .context("cannot write to stdout")?;
    Ok(())
}

/// One token in words.
fn describe(token: &Token, number: usize, count: usize, position: &str, now: i64) -> String {
    let c = token.claims();
    let not_before = c.not_before.0;
    let expires = c.expires.0;
    let starts = if not_before > now {
        format!("NOT YET VALID: starts in {}", compact(not_before - now))
    } else {
        format!("valid since {}", relative(now - not_before, "ago"))
    };
    let ends = if expires > now {
        format!("expires in {}", compact(expires - now))
    } else {
        format!("EXPIRED {}", relative(now - expires, "ago"))
    };
    let parent = c.parent.map_or_else(
        || "none (a top token, signed by a trust anchor)".to_owned(),
        |p| p.to_string(),
    );
    format!(
        "token {number} of {count} ({position})\n  \
         id:          {}\n  \
         node:        {}\n  \
         node key:    {}\n  \
         issuer key:  {}\n  \
         tenant:      {}\n  \
         role:        {}\n  \
         publish:     {}\n  \
         receive:     {}\n  \
         not before:  {} ({starts})\n  \
         expires:     {} ({ends})\n  \
         parent:      {parent}\n",
        c.id,
        c.node_id,
        c.node_key,
        c.issuer_key,
        c.tenant.as_deref().unwrap_or("(none: any tenant)"),
        c.role,
        list(&c.publish),
        list(&c.receive),
        rfc3339(not_before),
        rfc3339(expires),
    )
}

// ---- verify ---------------------------------------------------------------------------

fn verify(file: &Path, trust: &[PublicKeyArg], at: Option<OffsetDateTime>) -> anyhow::Result<()> {
    let anchors = trust
        .iter()
        .map(|arg| load_public("--trust", arg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let now = at.map_or_else(now_secs, OffsetDateTime::unix_timestamp);
    let chain = read_chain(file)?;
    let verifier = Verifier::new(anchors);
    match verifier.verify_chain(chain.tokens(), UnixTime(now)) {
        Ok(grant) => {
            let tenant = grant
                .tenant()
                .map_or_else(|| "no tenant".to_owned(), |t| format!("tenant {t}"));
            let expires = grant.expires().0;
            let ends = if expires > now {
                format!("in {}", compact(expires - now))
            } else {
                format!("{}, within the clock skew", relative(now - expires, "ago"))
            };
            println!(
                "valid: node {}, {}, {tenant}, expires {} ({ends})",
                grant.node_id(),
                grant.role(),
                rfc3339(expires),
            );
            Ok(())
        }
        Err(error) => {
            let when = match &error {
                TokenError::Expired { expires, .. } => {
                    format!(" [expired {}]", rfc3339(*expires))
                }
                TokenError::NotYetValid { not_before, .. } => {
                    format!(" [valid from {}]", rfc3339(*not_before))
                }
                _ => String::new(),
            };
            Err(anyhow!("{error}{when}").context(format!("{} does not verify", file.display())))
        }
    }
}

// ---- reading and parsing --------------------------------------------------------------

/// Reads a chain file, refusing key files by their prefix without showing them.
fn read_chain(path: &Path) -> anyhow::Result<Chain> {
    let bytes = nexus_config::read_capped(path, MAX_CHAIN_BYTES as u64)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    if bytes.starts_with(SECRET_KEY_PREFIX.as_bytes()) {
        bail!(
            "{}: this is a secret key file, not a token (its contents are not shown)",
            path.display()
        );
    }
    if bytes.starts_with(PUBLIC_KEY_PREFIX.as_bytes()) {
        bail!("{}: this is a public key file, not a token", path.display());
    }
    Chain::decode(&bytes).map_err(|e| anyhow!("{} is not a token chain: {e}", path.display()))
}

/// A public key given as text (parsed by clap), or read from the .pub file named.
fn load_public(flag: &str, arg: &PublicKeyArg) -> anyhow::Result<PublicKey> {
    let path = match arg {
        PublicKeyArg::Key(key) => return Ok(*key),
        PublicKeyArg::File(path) => path,
    };
    let bytes = nexus_config::read_capped(path, PUBLIC_FILE_MAX_BYTES).with_context(|| {
        format!(
            "{flag} {:?} is neither an `ed25519:…` public key nor a readable .pub file",
            path.display()
        )
    })?;
    if bytes.starts_with(SECRET_KEY_PREFIX.as_bytes()) {
        bail!(
            "{flag} {}: this is a secret key file; give its .pub file or the public key text",
            path.display()
        );
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow!("{flag} {} is not a public key file", path.display()))?;
    PublicKey::parse(text.trim())
        .map_err(|e| anyhow!("{flag} {} is not a public key file: {e}", path.display()))
}

/// 16 random bytes from the OS.
fn new_token_id() -> anyhow::Result<TokenId> {
    let mut id = [0u8; 16];
    getrandom::getrandom(&mut id).map_err(|e| anyhow!("the OS random source failed: {e}"))?;
    Ok(TokenId(id))
}

// ---- formatting -----------------------------------------------------------------------

fn now_secs() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Unix seconds as RFC 3339 UTC, or the raw number when out of range.
fn rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{secs} (unix seconds)"))
}

/// `29d 23h`, `2h 5m`, `5m 3s`, `12s`: the two largest units.
fn compact(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `2h 5m ago`, or `just now`.
fn relative(secs: i64, suffix: &str) -> String {
    if secs < 1 {
        return "just now".to_owned();
    }
    format!("{} {suffix}", compact(secs))
}

/// Patterns as `a, b`, or `(nothing)`.
fn list(patterns: &[SubjectPattern]) -> String {
    if patterns.is_empty() {
        return "(nothing)".to_owned();
    }
    patterns
        .iter()
        .map(SubjectPattern::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_their_two_largest_units() {
        assert_eq!(compact(12), "12s");
        assert_eq!(compact(5 * 60 + 3), "5m 3s");
        assert_eq!(compact(2 * 3600 + 5 * 60 + 9), "2h 5m");
        assert_eq!(compact(29 * 86_400 + 23 * 3600 + 59), "29d 23h");
        assert_eq!(compact(-5), "0s");
    }

    #[test]
    fn public_keys_are_taken_as_text_or_pub_file_never_a_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = SecretKey::from_seed(&[3; 32]).expect("key");
        let public = secret.public();
        let pub_file = dir.path().join("n.key.pub");
        std::fs::write(&pub_file, format!("{public}\n")).expect("write");
        let secret_file = dir.path().join("n.key");
        std::fs::write(&secret_file, secret.to_file_text().as_bytes()).expect("write");

        assert_eq!(
            load_public("--node-key", &PublicKeyArg::Key(public)).expect("text"),
            public
        );
        assert_eq!(
            load_public("--node-key", &PublicKeyArg::File(pub_file)).expect("file"),
            public
        );
        let refused = load_public("--node-key", &PublicKeyArg::File(secret_file))
            .expect_err("a secret key file is refused");
        assert!(refused.to_string().contains("secret key file"), "{refused}");
        let body = secret.to_file_text();
        let body = body.trim().rsplit(':').next().expect("body");
        assert!(!format!("{refused:#}").contains(body), "{refused:#}");
    }
}
