//! Node ids and tenant ids: the names that end up inside subjects
//! (`nexus.{tenant}.…`, `nexus._core.edge.health.{node_id}`), so they are checked wherever
//! they enter: tokens, ACL principals, the config (`node.id`, `node.tenant`), envelopes and
//! command subjects.
//!
//! The one owner of these rules: the config and federation crates call the functions
//! below rather than keep their own copies, so `check` refuses exactly what the runtime
//! would.

/// Longest node or tenant id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// The principal name of apps on this node (the ACL keyword); never a node id.
pub const LOCAL: &str = "local";

/// Checks a node or tenant id: 1..=64 characters of `[a-z0-9_-]`.
pub fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("empty");
    }
    if id.len() > MAX_ID_LEN {
        return Err("longer than 64 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err("only a-z, 0-9, `_` and `-` are allowed");
    }
    Ok(())
}

/// Checks a node id: an id that is not the reserved `local`.
pub fn check_node_id(id: &str) -> Result<(), &'static str> {
    check_id(id)?;
    if id == LOCAL {
        return Err("`local` is reserved: it is the ACL principal of the apps on the node itself");
    }
    Ok(())
}

/// Checks a tenant id: an id that is not the reserved `_core`, the subject token of the
/// fleet's own system events (`nexus._core.…`): a tenant of that name would publish its
/// events among heartbeats and audit events.
pub fn check_tenant(id: &str) -> Result<(), &'static str> {
    check_id(id)?;
    if id == crate::subjects::CORE_TENANT {
        return Err("`_core` is reserved: it is the subject token of the fleet's system events (nexus._core.…)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_lowercase_subject_safe_tokens() {
        assert_eq!(check_id("edge-msk-01"), Ok(()));
        assert_eq!(check_id("salon_001"), Ok(()));
        assert!(check_id("").is_err());
        assert!(check_id("Edge").is_err());
        assert!(check_id("a.b").is_err());
        assert!(check_id("a*").is_err());
        assert!(check_id(&"a".repeat(65)).is_err());
        assert!(check_id(&"a".repeat(64)).is_ok());
        assert!(check_node_id("local").is_err());
        assert!(check_tenant("_core").is_err());
        assert_eq!(check_tenant("salon-001"), Ok(()));
        assert!(check_id("local").is_ok());
    }
}
