//! What the config tests share: a member's and a root's config, and a node's key and token
//! files inside a figment `Jail`.

use figment::Jail;
use nexus_policies::{Chain, Claims, Role, SecretKey, Token, TokenId, UnixTime, BUILD_FLOOR};

/// The public key of the root that signs [`write_node_files`]' tokens (for `root_keys`).
pub const ROOT_KEY: &str = "ed25519:iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w";

/// A valid member with a tenant and a `[local]` (what bridge rules need), its token at
/// `member.token`.
#[allow(dead_code)] // Not every test file uses every config.
pub const MEMBER: &str = r#"
[node]
id = "edge-01"
mode = "member"
tenant = "salon-001"
key = "node.key"
token = "member.token"
data_dir = "data"

[trust]
root_keys = ["ed25519:iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"]

[uplink]
url = "nats://hub.example:4222"

[local]
url = "nats://127.0.0.1:4222"
"#;

/// A valid root: without a token, it is the anchor (so any valid node id loads).
#[allow(dead_code)] // Not every test file uses every config.
pub const ROOT: &str = r#"
[node]
id = "root"
mode = "root"
key = "node.key"
data_dir = "data"

[trust]
root_keys = ["ed25519:iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w"]

[local]
url = "nats://127.0.0.1:4222"
"#;

/// Empties the environment and writes `node.key`, a token chain for `node_id` in `role`
/// signed by the root key (at `token`, if given), and `config` as `config_file`.
pub fn write_node_files(
    jail: &mut Jail,
    node_id: &str,
    role: Role,
    token: Option<&str>,
    config_file: &str,
    config: &str,
) -> figment::error::Result<()> {
    jail.clear_env();
    let node = SecretKey::from_seed(&[7; 32]).expect("key");
    let root = SecretKey::from_seed(&[1; 32]).expect("key");
    assert_eq!(root.public().to_string(), ROOT_KEY);
    jail.create_file("node.key", &node.to_file_text())?;
    if let Some(path) = token {
        let claims = Claims {
            id: TokenId([9; 16]),
            parent: None,
            issuer_key: root.public(),
            node_id: node_id.to_owned(),
            node_key: node.public(),
            tenant: None,
            role,
            publish: Vec::new(),
            receive: Vec::new(),
            not_before: BUILD_FLOOR,
            expires: UnixTime(BUILD_FLOOR.0 + 3600),
        };
        let token = Token::issue(claims, &root, None).expect("token");
        std::fs::write(path, Chain::new(vec![token]).expect("chain").encode()).expect("write");
    }
    jail.create_file(config_file, config)?;
    Ok(())
}
