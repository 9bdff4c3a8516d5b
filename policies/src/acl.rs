//! Prefix ACLs: the operator's local policy.
//!
//! In the agent's TOML config, each rule is one `[[acl]]` entry:
//!
//! ```toml
//! [[acl]]
//! principal = "edge-*"                       # who: see below
//! allow_publish = ["nexus.salon-001.>"]      # subjects it may publish
//! deny_publish  = ["nexus.salon-001.wallet.>"]
//! allow_receive = ["_nexus.cmd.edge-*.>"]    # subjects it may receive (commands down, …)
//! deny_receive  = []
//! ```
//!
//! All four lists are optional (empty by default) and hold NATS subject patterns
//! (`*` one token, `>` the rest). Unknown keys are refused.
//!
//! `principal` is one of:
//! - `local`: apps on this node (they talk to the local NATS server);
//! - an exact node id (`edge-msk-01`): that node;
//! - a glob with `*` standing for any run of characters (`edge-*`, `*-msk-*`, `*`).
//!   A glob is matched against the principal name as is, so `*` means everyone, local
//!   apps included, while `edge-*` never matches `local`.
//!
//! Evaluation, for a principal, an action and a subject: among the rules whose principal
//! matches, a matching deny pattern wins over any allow pattern, whatever the order of the
//! rules; otherwise a matching allow pattern allows; otherwise the subject is denied
//! (default deny). An invalid subject (empty token, wildcard, whitespace) is denied. The
//! [`Decision`] names the rule and pattern that decided, for logs.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::AclError;
use crate::ids::{check_id, LOCAL};
use crate::pattern::{check_subject, SubjectPattern};

/// What a principal wants to do with a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Send a message on the subject.
    Publish,
    /// Be delivered messages on the subject.
    Receive,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Publish => "publish",
            Action::Receive => "receive",
        })
    }
}

/// Who a rule is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Principal {
    /// `local`: apps on this node.
    Local,
    /// One node, by id.
    Node(String),
    /// Node ids matching a glob; `*` is any run of characters.
    Glob(String),
}

impl Principal {
    /// Parses `local`, a node id, or a glob of node-id characters and `*`.
    pub fn parse(text: &str) -> Result<Self, AclError> {
        let bad = |reason| AclError::BadPrincipal {
            principal: text.to_string(),
            reason,
        };
        if text == LOCAL {
            return Ok(Principal::Local);
        }
        if text.contains('*') {
            // Validate the literal parts as id characters.
            let literal: String = text.chars().filter(|&c| c != '*').collect();
            if !literal.is_empty() {
                check_id(&literal).map_err(bad)?;
            }
            if text.len() > crate::ids::MAX_ID_LEN {
                return Err(bad("longer than 64 characters"));
            }
            return Ok(Principal::Glob(text.to_string()));
        }
        check_id(text).map_err(bad)?;
        Ok(Principal::Node(text.to_string()))
    }

    /// Whether `name` (a node id, or `local` for apps on this node) is this principal.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Principal::Local => name == LOCAL,
            Principal::Node(id) => name == id,
            Principal::Glob(glob) => glob_matches(glob.as_bytes(), name.as_bytes()),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Local => f.write_str(LOCAL),
            Principal::Node(s) | Principal::Glob(s) => f.write_str(s),
        }
    }
}

impl TryFrom<String> for Principal {
    type Error = AclError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Principal> for String {
    fn from(value: Principal) -> Self {
        value.to_string()
    }
}

/// `*`-only glob match (any run of characters, possibly empty), iterative with one
/// backtrack point: linear-ish and without recursion.
fn glob_matches(glob: &[u8], name: &[u8]) -> bool {
    let (mut g, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if g < glob.len() && glob[g] == b'*' {
            star = Some((g, n));
            g += 1;
        } else if g < glob.len() && glob[g] == name[n] {
            g += 1;
            n += 1;
        } else if let Some((sg, sn)) = star {
            g = sg + 1;
            n = sn + 1;
            star = Some((sg, sn + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

/// One `[[acl]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// Who the rule is about: `local`, a node id, or a glob such as `edge-*`.
    pub principal: Principal,
    /// Subjects the principal may publish (unless denied).
    #[serde(default)]
    pub allow_publish: Vec<SubjectPattern>,
    /// Subjects the principal may never publish.
    #[serde(default)]
    pub deny_publish: Vec<SubjectPattern>,
    /// Subjects the principal may receive (unless denied).
    #[serde(default)]
    pub allow_receive: Vec<SubjectPattern>,
    /// Subjects the principal may never receive.
    #[serde(default)]
    pub deny_receive: Vec<SubjectPattern>,
}

impl AclRule {
    fn lists(&self, action: Action) -> (&[SubjectPattern], &[SubjectPattern]) {
        match action {
            Action::Publish => (&self.allow_publish, &self.deny_publish),
            Action::Receive => (&self.allow_receive, &self.deny_receive),
        }
    }
}

/// The operator's ACL: the list of `[[acl]]` rules (it deserializes from that array).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Acl {
    rules: Vec<AclRule>,
}

/// The outcome of an ACL check, naming what decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Allowed by an allow pattern (and no deny pattern matched).
    Allow {
        /// Index of the rule in the `[[acl]]` list (0-based).
        rule: usize,
        /// The rule's principal.
        principal: &'a Principal,
        /// The allow pattern that matched.
        pattern: &'a SubjectPattern,
    },
    /// Denied by a deny pattern (deny wins).
    Deny {
        /// Index of the rule in the `[[acl]]` list (0-based).
        rule: usize,
        /// The rule's principal.
        principal: &'a Principal,
        /// The deny pattern that matched.
        pattern: &'a SubjectPattern,
    },
    /// No rule allows it: default deny.
    NoRule,
    /// The subject is not a valid concrete subject.
    InvalidSubject,
}

impl Decision<'_> {
    /// Whether the action is allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow {
                rule,
                principal,
                pattern,
            } => {
                write!(
                    f,
                    "allowed by acl[{rule}] (principal `{principal}`, pattern `{pattern}`)"
                )
            }
            Decision::Deny {
                rule,
                principal,
                pattern,
            } => {
                write!(
                    f,
                    "denied by acl[{rule}] (principal `{principal}`, pattern `{pattern}`)"
                )
            }
            Decision::NoRule => f.write_str("denied: no acl rule allows it"),
            Decision::InvalidSubject => f.write_str("denied: invalid subject"),
        }
    }
}

impl Acl {
    /// An ACL from its rules, in order.
    pub fn new(rules: Vec<AclRule>) -> Self {
        Self { rules }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[AclRule] {
        &self.rules
    }

    /// Decides whether `principal` (a node id, or `local`) may do `action` on `subject`.
    /// Deny wins over allow; default deny.
    pub fn check(&self, principal: &str, action: Action, subject: &str) -> Decision<'_> {
        if check_subject(subject).is_err() {
            return Decision::InvalidSubject;
        }
        let mut allow = None;
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.principal.matches(principal) {
                continue;
            }
            let (allows, denies) = rule.lists(action);
            if let Some(pattern) = denies.iter().find(|p| p.matches(subject)) {
                return Decision::Deny {
                    rule: index,
                    principal: &rule.principal,
                    pattern,
                };
            }
            if allow.is_none() {
                if let Some(pattern) = allows.iter().find(|p| p.matches(subject)) {
                    allow = Some(Decision::Allow {
                        rule: index,
                        principal: &rule.principal,
                        pattern,
                    });
                }
            }
        }
        allow.unwrap_or(Decision::NoRule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        #[serde(default)]
        acl: Acl,
    }

    const EXAMPLE: &str = r#"
        [[acl]]
        principal = "edge-*"
        allow_publish = ["nexus.salon-001.>"]
        deny_publish = ["nexus.salon-001.wallet.>"]

        [[acl]]
        principal = "edge-msk-01"
        allow_publish = ["nexus.salon-001.wallet.balance"]
        allow_receive = ["_nexus.cmd.edge-msk-01.>"]

        [[acl]]
        principal = "local"
        allow_publish = ["embassy.*"]
        deny_publish = ["wallet.>"]

        [[acl]]
        principal = "*"
        deny_publish = ["_nexus.>"]
    "#;

    fn acl() -> Acl {
        toml::from_str::<Config>(EXAMPLE)
            .expect("example parses")
            .acl
    }

    #[test]
    fn the_documented_toml_shape_deserializes() {
        let acl = acl();
        assert_eq!(acl.rules().len(), 4);
        assert_eq!(acl.rules()[0].principal, Principal::Glob("edge-*".into()));
        assert_eq!(
            acl.rules()[1].principal,
            Principal::Node("edge-msk-01".into())
        );
        assert_eq!(acl.rules()[2].principal, Principal::Local);
        assert!(acl.rules()[2].allow_receive.is_empty());
        let empty: Config = toml::from_str("").expect("no acl is fine");
        assert_eq!(empty.acl, Acl::default());
    }

    #[test]
    fn bad_rules_are_refused_with_the_offending_value() {
        for (text, needle) in [
            ("[[acl]]\nprincipal = \"Edge-1\"", "Edge-1"),
            ("[[acl]]\nprincipal = \"\"", "empty"),
            (
                "[[acl]]\nprincipal = \"a\"\nallow_publish = [\"a..b\"]",
                "a..b",
            ),
            (
                "[[acl]]\nprincipal = \"a\"\nallow_pub = [\"a\"]",
                "allow_pub",
            ),
            ("[[acl]]\nallow_publish = [\"a\"]", "principal"),
        ] {
            let err = toml::from_str::<Config>(text).err().expect("refused");
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn deny_wins_over_allow_whatever_the_rule_order() {
        let acl = acl();
        let d = acl.check(
            "edge-msk-01",
            Action::Publish,
            "nexus.salon-001.wallet.balance",
        );
        assert_eq!(
            d,
            Decision::Deny {
                rule: 0,
                principal: &Principal::Glob("edge-*".into()),
                pattern: &"nexus.salon-001.wallet.>".parse().expect("valid"),
            }
        );
        assert!(!d.is_allowed());
        assert!(d.to_string().contains("acl[0]"), "{d}");
    }

    #[test]
    fn allow_names_the_first_matching_rule() {
        let acl = acl();
        let d = acl.check(
            "edge-spb-02",
            Action::Publish,
            "nexus.salon-001.iot.sensor_data",
        );
        assert!(d.is_allowed());
        assert!(matches!(d, Decision::Allow { rule: 0, .. }), "{d:?}");
        let d = acl.check(
            "edge-msk-01",
            Action::Receive,
            "_nexus.cmd.edge-msk-01.reboot",
        );
        assert!(matches!(d, Decision::Allow { rule: 1, .. }), "{d:?}");
    }

    #[test]
    fn default_deny_and_invalid_subjects() {
        let acl = acl();
        assert_eq!(
            acl.check("edge-1", Action::Receive, "nexus.salon-001.x"),
            Decision::NoRule
        );
        assert_eq!(
            acl.check("hub-1", Action::Publish, "nexus.salon-001.x"),
            Decision::NoRule
        );
        assert_eq!(
            acl.check("edge-1", Action::Publish, "nexus.salon-001.*"),
            Decision::InvalidSubject
        );
        assert_eq!(
            Acl::default().check("local", Action::Publish, "a"),
            Decision::NoRule
        );
    }

    #[test]
    fn local_is_its_own_principal_and_star_means_everyone() {
        let acl = acl();
        assert!(acl
            .check("local", Action::Publish, "embassy.open")
            .is_allowed());
        assert!(!acl
            .check("edge-1", Action::Publish, "embassy.open")
            .is_allowed());
        assert!(matches!(
            acl.check("local", Action::Publish, "wallet.x"),
            Decision::Deny { rule: 2, .. }
        ));
        // The catch-all deny applies to local apps too.
        assert!(matches!(
            acl.check("local", Action::Publish, "_nexus.x"),
            Decision::Deny { rule: 3, .. }
        ));
        assert!(matches!(
            acl.check("edge-1", Action::Publish, "_nexus.x"),
            Decision::Deny { rule: 3, .. }
        ));
    }

    #[test]
    fn principal_globs() {
        let g = |s: &str| Principal::parse(s).expect("valid");
        assert!(g("edge-*").matches("edge-msk-01"));
        assert!(g("edge-*").matches("edge-"));
        assert!(!g("edge-*").matches("hub-1"));
        assert!(!g("edge-*").matches("local"));
        assert!(g("*-msk-*").matches("edge-msk-01"));
        assert!(!g("*-msk-*").matches("edge-spb-01"));
        assert!(g("*").matches("local"));
        assert!(g("a*b*c").matches("aXbYbZc"));
        assert!(!g("a*b*c").matches("aXbYbZ"));
        assert_eq!(g("local"), Principal::Local);
        assert!(!g("edge-1").matches("edge-10"));
        assert!(matches!(
            Principal::parse("edge.*"),
            Err(AclError::BadPrincipal { .. })
        ));
    }
}
