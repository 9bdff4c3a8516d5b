//! `[[acl]]`: the operator's local policy, every entry checked and every problem reported
//! with its index.

use figment::value::{Dict, Value};
use nexus_policies::{Acl, AclRule, Principal};

use super::reader::{Reader, Reported, Section};
use super::schema::{ACL, ACL_KEYS};
use crate::error::ErrorKind;
use crate::model::AclPolicy;
use crate::source;

impl Reader<'_> {
    /// `[[acl]]`: absent means "whatever the token grants"; present, every entry is checked
    /// and every problem reported with its index (`acl[2].allow_publish[0]`).
    pub(super) fn acl(&mut self, root: &Dict) -> AclPolicy {
        let Some(value) = root.get(ACL).filter(|v| !matches!(v, Value::Empty(..))) else {
            return AclPolicy::TokenGrants;
        };
        let Value::Array(_, entries) = value else {
            let origin = source::origin_of(self.figment, value, &[ACL]);
            self.push(
                ErrorKind::InvalidType,
                origin,
                ACL,
                format!(
                    "expected an array of tables, found {}: write each rule as an [[acl]] \
                     entry (two brackets)",
                    value.to_actual()
                ),
            );
            return AclPolicy::Rules(Acl::default());
        };
        let mut rules = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let s = self.table(Some(entry), format!("{ACL}[{index}]"), ACL_KEYS);
            if let Some(rule) = self.acl_rule(&s) {
                rules.push(rule);
            }
        }
        AclPolicy::Rules(Acl::new(rules))
    }

    fn acl_rule(&mut self, s: &Section<'_>) -> Option<AclRule> {
        s.dict?;
        let principal = match self.text(s, "principal", "a string") {
            Ok(Some(got)) => match Principal::parse(&got.value) {
                Ok(principal) => Some(principal),
                Err(error) => {
                    self.push(
                        ErrorKind::BadPrincipal,
                        got.origin,
                        &got.path,
                        format!(
                            "{error}: use `local` (apps on this node), a node id, or a glob of \
                             node ids such as `edge-*`"
                        ),
                    );
                    None
                }
            },
            Ok(None) => {
                self.push(
                    ErrorKind::MissingKey,
                    s.origin.clone(),
                    &format!("{}.principal", s.name),
                    "missing required key: add principal = \"edge-*\" (or `local`, a node id)"
                        .to_owned(),
                );
                None
            }
            Err(Reported) => None,
        };
        let allow_publish = self.patterns(s, "allow_publish");
        let deny_publish = self.patterns(s, "deny_publish");
        let allow_receive = self.patterns(s, "allow_receive");
        let deny_receive = self.patterns(s, "deny_receive");
        Some(AclRule {
            principal: principal?,
            allow_publish: allow_publish?,
            deny_publish: deny_publish?,
            allow_receive: allow_receive?,
            deny_receive: deny_receive?,
        })
    }
}
