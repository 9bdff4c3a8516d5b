//! `[landing]` and its `[[landing.domains]]` (root only): the journal every event lands
//! in, and the domain streams that select from it (tests: `config/tests/landing.rs`).

use figment::value::Value;
use nexus_policies::subjects::{self, EVENT_PREFIX};
use nexus_policies::SubjectPattern;

use super::reader::{truncate, Reader, Section};
use super::schema::LANDING_DOMAIN_KEYS;
use crate::error::ErrorKind;
use crate::model::{IngressConfig, LandingConfig, LandingDomain, Mode};

impl Reader<'_> {
    /// `[landing]` (root only) and its `[[landing.domains]]`. The journal dedups within
    /// `ingress.duplicate_window`, so it may not keep events for less; every stream has a
    /// name of its own.
    pub(super) fn landing(
        &mut self,
        s: &Section<'_>,
        mode: Option<Mode>,
        ingress: &IngressConfig,
    ) -> LandingConfig {
        let defaults = LandingConfig::defaults();
        if let Some(mode @ (Mode::Member | Mode::Hub)) = mode {
            if s.present {
                self.push(
                    ErrorKind::ForbiddenSection,
                    s.origin.clone(),
                    "landing",
                    format!(
                        "a {mode} does not land events: remove the [landing] section (only the \
                         root lands events in JetStream; a {mode} forwards them up)"
                    ),
                );
            }
            return defaults;
        }
        if s.present && s.dict.is_none() {
            return defaults;
        }
        let stream = self.jetstream_name(s, "stream", &defaults.stream);
        if stream == ingress.stream {
            let origin = self.origin_or_fallback(s, "stream");
            self.push(
                ErrorKind::InvalidValue,
                origin,
                "landing.stream",
                format!(
                    "{stream:?} is also ingress.stream: the journal and the ingress are two \
                     streams, give them different names"
                ),
            );
        }
        let max_age = self.duration(s, "max_age", defaults.max_age);
        if max_age < ingress.duplicate_window {
            let origin = self.origin_or_fallback(s, "max_age");
            let default = if self.raw(s, "max_age").is_none() {
                " (the default)"
            } else {
                ""
            };
            self.push(
                ErrorKind::InvalidValue,
                origin,
                "landing.max_age",
                format!(
                    "{}{default} is shorter than ingress.duplicate_window ({}), the journal's \
                     dedup window; JetStream requires duplicate_window <= max_age: raise \
                     landing.max_age or lower ingress.duplicate_window",
                    humantime::format_duration(max_age),
                    humantime::format_duration(ingress.duplicate_window)
                ),
            );
        }
        let max_bytes = self
            .integer(s, "max_bytes", 1..=i128::from(i64::MAX))
            .and_then(|v| i64::try_from(v).ok());
        // The names already taken, and by whom.
        let mut taken = vec![
            (stream.clone(), "the journal (landing.stream)".to_owned()),
            (
                ingress.stream.clone(),
                "the ingress (ingress.stream)".to_owned(),
            ),
        ];
        let domains = match self.raw(s, "domains") {
            None => {
                for domain in &defaults.domains {
                    if let Some((_, owner)) = taken.iter().find(|(n, _)| *n == domain.name) {
                        let message = format!(
                            "the default domain stream {:?} has the name of {owner}: rename \
                             that stream, or list your own [[landing.domains]]",
                            domain.name
                        );
                        self.push(
                            ErrorKind::InvalidValue,
                            self.fallback.clone(),
                            "landing.domains",
                            message,
                        );
                    }
                }
                defaults.domains
            }
            Some((Value::Array(_, entries), _, path)) => {
                let mut domains = Vec::with_capacity(entries.len());
                for (index, entry) in entries.iter().enumerate() {
                    let section =
                        self.table(Some(entry), format!("{path}[{index}]"), LANDING_DOMAIN_KEYS);
                    if let Some(domain) = self.landing_domain(&section, &mut taken) {
                        domains.push(domain);
                    }
                }
                domains
            }
            Some((value, origin, path)) => {
                self.push(
                    ErrorKind::InvalidType,
                    origin,
                    &path,
                    format!(
                        "expected an array of tables, found {}: write each domain as a \
                         [[landing.domains]] entry (two brackets)",
                        value.to_actual()
                    ),
                );
                Vec::new()
            }
        };
        let replicas = self.replicas(s, "the journal and every domain stream");
        LandingConfig {
            stream,
            max_age,
            max_bytes,
            domains,
            replicas,
        }
    }

    /// One `[[landing.domains]]` entry; its name is added to `taken` (name, whose).
    fn landing_domain(
        &mut self,
        s: &Section<'_>,
        taken: &mut Vec<(String, String)>,
    ) -> Option<LandingDomain> {
        s.dict?;
        let name = self
            .required_text(
                s,
                "name",
                "name = \"NEXUS_BOOKING\" (the domain stream's name)",
            )
            .and_then(|g| {
                if !self.is_jetstream_name(&g) {
                    return None;
                }
                // Key-value buckets are streams named KV_<bucket> (the agent's own among
                // them): a domain of that name would replace a bucket.
                if g.value.starts_with("KV_") || g.value.starts_with("OBJ_") {
                    self.push(
                        ErrorKind::InvalidValue,
                        g.origin,
                        &g.path,
                        format!(
                            "{:?} is reserved: streams named KV_… and OBJ_… are NATS key-value \
                             and object stores (e.g. the agent's KV_NEXUS_CHAINS): pick \
                             another name, e.g. \"NEXUS_BOOKING\"",
                            truncate(&g.value)
                        ),
                    );
                    return None;
                }
                if let Some((_, owner)) = taken.iter().find(|(n, _)| *n == g.value) {
                    self.push(
                        ErrorKind::InvalidValue,
                        g.origin,
                        &g.path,
                        format!(
                            "{:?} is already the name of {owner}: every stream needs a name of \
                             its own",
                            g.value
                        ),
                    );
                    return None;
                }
                taken.push((g.value.clone(), s.name.clone()));
                Some(g.value)
            });
        let subjects = if self.raw(s, "subjects").is_none() {
            self.push(
                ErrorKind::MissingKey,
                s.origin.clone(),
                &format!("{}.subjects", s.name),
                "missing required key: add subjects = [\"nexus.*.booking.>\"] (the event \
                 subjects this domain keeps)"
                    .to_owned(),
            );
            None
        } else {
            self.patterns(s, "subjects")
                .and_then(|subjects| self.event_subjects(s, subjects))
        };
        let max_age = if self.raw(s, "max_age").is_none() {
            self.push(
                ErrorKind::MissingKey,
                s.origin.clone(),
                &format!("{}.max_age", s.name),
                "missing required key: add max_age = \"365d\" (how long this domain keeps its \
                 events)"
                    .to_owned(),
            );
            None
        } else {
            self.optional_duration(s, "max_age")
        };
        let max_bytes = self
            .integer(s, "max_bytes", 1..=i128::from(i64::MAX))
            .and_then(|v| i64::try_from(v).ok());
        Some(LandingDomain {
            name: name?,
            subjects: subjects?,
            max_age: max_age?,
            max_bytes,
        })
    }

    /// `subjects` of a domain: not empty, each an event subject (`nexus.…`), since a domain
    /// selects from the journal.
    fn event_subjects(
        &mut self,
        s: &Section<'_>,
        subjects: Vec<SubjectPattern>,
    ) -> Option<Vec<SubjectPattern>> {
        let path = format!("{}.subjects", s.name);
        if subjects.is_empty() {
            let origin = self.origin_or_fallback(s, "subjects");
            self.push(
                ErrorKind::InvalidValue,
                origin,
                &path,
                "an empty list selects nothing: list the event subjects this domain keeps, e.g. \
                 [\"nexus.*.booking.>\"] (or remove the domain)"
                    .to_owned(),
            );
            return None;
        }
        let mut bad = false;
        for (index, subject) in subjects.iter().enumerate() {
            if subjects::is_event_subject_pattern(subject.as_str()) {
                continue;
            }
            let origin = self.origin_or_fallback(s, "subjects");
            self.push(
                ErrorKind::InvalidValue,
                origin,
                &format!("{path}[{index}]"),
                format!(
                    "{:?} is not an event subject: a domain selects from the journal, which \
                     holds {EVENT_PREFIX}.> only; start it with `{EVENT_PREFIX}.`, e.g. \
                     \"nexus.*.booking.>\"",
                    truncate(subject.as_str())
                ),
            );
            bad = true;
        }
        // One source filters by all of them at once: JetStream refuses overlapping filters.
        for (index, subject) in subjects.iter().enumerate() {
            if let Some(earlier) = subjects[..index].iter().find(|e| e.overlaps(subject)) {
                let origin = self.origin_or_fallback(s, "subjects");
                self.push(
                    ErrorKind::InvalidValue,
                    origin,
                    &format!("{path}[{index}]"),
                    format!(
                        "{:?} overlaps {:?} in the same domain (some subject matches both): \
                         keep the wider one, or split them into two domains",
                        truncate(subject.as_str()),
                        truncate(earlier.as_str())
                    ),
                );
                bad = true;
            }
        }
        (!bad).then_some(subjects)
    }
}
