//! `[bridge]` with its `[[bridge.up]]` and `[[bridge.down]]` rules: which local subjects
//! become events and which commands become local requests, and the subjects no rule may
//! touch (tests: `config/tests/bridge.rs`).

use figment::value::Value;
use nexus_policies::ids::{self, MAX_ID_LEN};
use nexus_policies::subjects::{
    self, NotAppSubject, AGENT_DOMAIN, MAX_EVENT_NAME_LEN, RESERVED_EVENT_DOMAINS,
};
use nexus_policies::{RewriteError, SubjectPattern, SubjectRewrite};

use super::node::PartialNode;
use super::reader::{truncate, Got, Reader, Section};
use super::schema::{
    BRIDGE_DOWN_TIMEOUT, BRIDGE_MAX_PAYLOAD_RANGE, BRIDGE_MAX_RULES, DOWN_RULE_KEYS, UP_RULE_KEYS,
};
use crate::error::ErrorKind;
use crate::model::{BridgeConfig, BridgeEncoding, DownRule, Mode, UpRule};

impl Reader<'_> {
    /// `[bridge]` with its `[[bridge.up]]` and `[[bridge.down]]` rules. Rules need
    /// `[local]` (where the apps are); up rules need `node.tenant` (app events are tenant
    /// events).
    pub(super) fn bridge(
        &mut self,
        s: &Section<'_>,
        node: Option<&PartialNode>,
        local_present: bool,
    ) -> BridgeConfig {
        let defaults = BridgeConfig::default();
        if s.dict.is_none() {
            return defaults;
        }
        let max_payload = self
            .integer(s, "max_payload", BRIDGE_MAX_PAYLOAD_RANGE)
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(defaults.max_payload);
        let (up, up_written) = self.rule_list(s, "up", UP_RULE_KEYS, Self::up_rule);
        let (down, down_written) = self.rule_list(s, "down", DOWN_RULE_KEYS, Self::down_rule);
        let mode = node.and_then(|n| n.mode);
        // A hub or root without [local] has been told already.
        if up_written + down_written > 0
            && !local_present
            && !matches!(mode, Some(Mode::Hub | Mode::Root))
        {
            self.push(
                ErrorKind::MissingSection,
                self.fallback.clone(),
                "local",
                "[bridge] rules connect local apps to the federation: add [local] with the url \
                 of the box's own NATS, where the apps are (e.g. url = \"nats://127.0.0.1:4222\")"
                    .to_owned(),
            );
        }
        if up_written > 0
            && node.is_some_and(|n| n.tenant.is_none())
            && !self.reported("node.tenant")
        {
            self.push(
                ErrorKind::MissingKey,
                self.fallback.clone(),
                "node.tenant",
                "[[bridge.up]] rules publish tenant events (nexus.{tenant}.{event}): add \
                 tenant = \"salon-001\" under [node]"
                    .to_owned(),
            );
        }
        BridgeConfig {
            up,
            down,
            max_payload,
        }
    }

    /// The array of tables `[[{section}.{key}]]`, at most [`BRIDGE_MAX_RULES`] entries, each
    /// read by `read` with every problem reported by index: the valid rules, and how many
    /// were written (valid or not).
    fn rule_list<T>(
        &mut self,
        s: &Section<'_>,
        key: &str,
        known: &[&str],
        read: impl Fn(&mut Self, &Section<'_>) -> Option<T>,
    ) -> (Vec<T>, usize) {
        let Some((value, origin, path)) = self.raw(s, key) else {
            return (Vec::new(), 0);
        };
        let Value::Array(_, entries) = value else {
            self.push(
                ErrorKind::InvalidType,
                origin,
                &path,
                format!(
                    "expected an array of tables, found {}: write each rule as a [[{path}]] \
                     entry (two brackets)",
                    value.to_actual()
                ),
            );
            return (Vec::new(), 1);
        };
        if entries.len() > BRIDGE_MAX_RULES {
            self.push(
                ErrorKind::InvalidValue,
                origin,
                &path,
                format!(
                    "{} rules: at most {BRIDGE_MAX_RULES} are allowed (every message is tried \
                     against them in order); merge rules with wildcards (`*`, `>`)",
                    entries.len()
                ),
            );
            return (Vec::new(), entries.len());
        }
        let mut rules = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let section = self.table(Some(entry), format!("{path}[{index}]"), known);
            if let Some(rule) = read(self, &section) {
                rules.push(rule);
            }
        }
        (rules, entries.len())
    }

    /// One `[[bridge.up]]` rule: `local` → `event`, and the encoding.
    fn up_rule(&mut self, s: &Section<'_>) -> Option<UpRule> {
        s.dict?;
        let local = self
            .required_text(
                s,
                "local",
                "local = \"app.booking.*\" (the local subjects this rule bridges up)",
            )
            .and_then(|g| self.local_subject(g, Flow::Up));
        let event = self
            .required_text(
                s,
                "event",
                "event = \"booking.*\" (the event name they become)",
            )
            .and_then(|g| self.name_pattern(g, Flow::Up));
        let encoding = match self.optional_text(s, "encoding") {
            None => Some(BridgeEncoding::default()),
            Some(g) => self.choice(g, "an encoding"),
        };
        let rewrite = self.rewrite(&local?, &event?, Flow::Up)?;
        Some(UpRule {
            rewrite,
            encoding: encoding?,
        })
    }

    /// One `[[bridge.down]]` rule: `command` → `local`, and the timeout.
    fn down_rule(&mut self, s: &Section<'_>) -> Option<DownRule> {
        s.dict?;
        let command = self
            .required_text(
                s,
                "command",
                "command = \"booking.cancel\" (the command name this rule delivers)",
            )
            .and_then(|g| self.name_pattern(g, Flow::Down));
        let local = self
            .required_text(
                s,
                "local",
                "local = \"app.booking.cancel\" (the local subject the request goes to)",
            )
            .and_then(|g| self.local_subject(g, Flow::Down));
        let timeout = self.duration(s, "timeout", BRIDGE_DOWN_TIMEOUT);
        let rewrite = self.rewrite(&command?, &local?, Flow::Down)?;
        Some(DownRule { rewrite, timeout })
    }

    /// The `local` side of a bridge rule: a subject pattern on the box's own NATS, whose
    /// first token is written out and is none of the reserved ones.
    fn local_subject(&mut self, got: Got<String>, flow: Flow) -> Option<Got<String>> {
        if let Err(error) = SubjectPattern::parse(&got.value) {
            self.bad_pattern(&got, &error.to_string());
            return None;
        }
        let first = got.value.split('.').next().unwrap_or_default();
        let problem = match (first, subjects::not_app_subject(first)) {
            ("*" | ">", _) => match flow {
                Flow::Up => {
                    "it starts with a wildcard, so it would also capture subjects that are no \
                     app's: the federation's own (_nexus.…), NATS's ($SYS.…, $JS.…) and request \
                     replies (_INBOX.…); start it with the apps' own prefix, e.g. \
                     \"app.booking.*\""
                }
                Flow::Down => {
                    "it starts with a wildcard, so a command's name would choose where on the \
                     local NATS its request goes; start it with the apps' own prefix, e.g. \
                     \"app.booking.cancel\""
                }
            },
            (_, Some(NotAppSubject::Federation)) => {
                "_nexus is reserved for the federation's own subjects: local apps can never \
                 publish there nor take requests there; use the apps' own subjects, e.g. \
                 \"app.booking.*\""
            }
            (_, Some(NotAppSubject::Inbox)) => {
                "_INBOX subjects are request replies, not app subjects; use the apps' own \
                 subjects, e.g. \"app.booking.*\""
            }
            (_, Some(NotAppSubject::Nats)) => {
                "subjects starting with `$` are NATS's own (system events, the JetStream API); \
                 use the apps' own subjects, e.g. \"app.booking.*\""
            }
            (_, None) => return Some(got),
        };
        self.push(
            ErrorKind::InvalidValue,
            got.origin,
            &got.path,
            format!("{:?} is refused: {problem}", truncate(&got.value)),
        );
        None
    }

    /// The event side of an up rule, or the command side of a down rule: a pattern of at
    /// least two tokens of `[a-z0-9_-]` or wildcards, whose first token (the domain) is
    /// written out and is not one of the agent's own.
    fn name_pattern(&mut self, got: Got<String>, flow: Flow) -> Option<Got<String>> {
        if let Err(error) = SubjectPattern::parse(&got.value) {
            self.bad_pattern(&got, &error.to_string());
            return None;
        }
        let (what, example) = match flow {
            Flow::Up => ("an event name", "booking.*"),
            Flow::Down => ("a command name", "booking.cancel"),
        };
        let tokens: Vec<&str> = got.value.split('.').collect();
        let first = tokens.first().copied().unwrap_or_default();
        let bad_token = tokens
            .iter()
            .find(|t| !matches!(**t, "*" | ">") && ids::check_id(t).is_err());
        let problem = if got.value.len() > MAX_EVENT_NAME_LEN {
            format!(
                "{} bytes: a name is at most {MAX_EVENT_NAME_LEN} (every event or command \
                 under this rule would be refused)",
                got.value.len()
            )
        } else if let Some(token) = bad_token {
            format!(
                "token {:?} is not 1-{MAX_ID_LEN} chars of [a-z0-9_-] (or a wildcard `*`, `>`)",
                truncate(token)
            )
        } else if tokens.len() < 2 {
            format!("it needs at least two tokens, its domain first: e.g. \"{example}\"")
        } else if matches!(first, "*" | ">") {
            match flow {
                Flow::Up => format!(
                    "its first token is the event's domain and must be written out: a wildcard \
                     would let a local app publish in any domain, the agent's own ({}) \
                     included; e.g. \"{example}\"",
                    RESERVED_EVENT_DOMAINS.join(", ")
                ),
                Flow::Down => format!(
                    "its first token is the command's domain and must be written out: a \
                     wildcard would also take the agent's built-in commands \
                     ({AGENT_DOMAIN}.…); e.g. \"{example}\""
                ),
            }
        } else if flow == Flow::Up && RESERVED_EVENT_DOMAINS.contains(&first) {
            format!(
                "`{first}` is a domain of the agent's own events ({} are reserved): use the \
                 app's domain, e.g. \"{example}\"",
                RESERVED_EVENT_DOMAINS.join(", ")
            )
        } else if flow == Flow::Down && first == AGENT_DOMAIN {
            format!(
                "`{AGENT_DOMAIN}` is the domain of the agent's built-in commands: use \
                 the app's domain, e.g. \"{example}\""
            )
        } else {
            return Some(got);
        };
        self.push(
            ErrorKind::InvalidValue,
            got.origin,
            &got.path,
            format!("{:?} is not {what}: {problem}", truncate(&got.value)),
        );
        None
    }

    /// The rewrite `from` → `to` of a bridge rule; a wildcard mismatch is reported on `to`,
    /// the side that must follow.
    fn rewrite(
        &mut self,
        from: &Got<String>,
        to: &Got<String>,
        flow: Flow,
    ) -> Option<SubjectRewrite> {
        match SubjectRewrite::new(&from.value, &to.value) {
            Ok(rewrite) => Some(rewrite),
            Err(RewriteError::BadPattern { text, reason }) => {
                // Both sides were parsed already; kept for completeness.
                let got = if text == from.value { from } else { to };
                self.bad_pattern(got, &reason);
                None
            }
            Err(error) => {
                let fix = match flow {
                    Flow::Up => {
                        "give event the wildcards of local, in the same order: local = \
                         \"app.booking.*\" with event = \"booking.*\""
                    }
                    Flow::Down => {
                        "give local the wildcards of command, in the same order: command = \
                         \"booking.*\" with local = \"app.booking.*\""
                    }
                };
                self.push(
                    ErrorKind::InvalidValue,
                    to.origin.clone(),
                    &to.path,
                    format!("{error}; {fix}"),
                );
                None
            }
        }
    }

    /// Reports `got` as a subject pattern that does not parse.
    fn bad_pattern(&mut self, got: &Got<String>, error: &str) {
        self.push(
            ErrorKind::BadPattern,
            got.origin.clone(),
            &got.path,
            format!(
                "{:?} is not a subject pattern: {error} (tokens are separated by `.`; `*` \
                 stands for one token, `>` for the rest)",
                truncate(&got.value)
            ),
        );
    }
}

/// Which way a bridge rule goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// `[[bridge.up]]`: a local subject becomes an event.
    Up,
    /// `[[bridge.down]]`: a command becomes a request on a local subject.
    Down,
}
