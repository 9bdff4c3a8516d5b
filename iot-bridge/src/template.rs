//! Topic templates: `zigbee2mqtt/{sensor_id}`, `sensors/{sensor_id}/{metric}`.
//!
//! What a valid template is belongs to the config crate ([`TopicTemplate`]: the validation
//! refuses exactly what would fail here). This module compiles a parsed template into its
//! subscription filter, and matches topics against its segments without allocating (the
//! captures borrow from the topic).

use nexus_config::{TopicSegment, TopicTemplate, TopicTemplateError};

/// A compiled topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    template: TopicTemplate,
    /// The MQTT subscription filter: placeholders become `+`.
    filter: String,
}

/// What a topic's placeholders captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Captures<'t> {
    /// The `{sensor_id}` segment.
    pub sensor_id: &'t str,
    /// The `{metric}` segment, if the template has one.
    pub metric: Option<&'t str>,
}

/// Why a template was refused (the config validation reports the same problem first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic template {template:?}: {reason}")]
pub struct TemplateError {
    /// The template.
    pub template: String,
    /// What is wrong.
    pub reason: TopicTemplateError,
}

impl Template {
    /// Compiles a template.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let template = TopicTemplate::parse(template).map_err(|reason| TemplateError {
            template: template.to_owned(),
            reason,
        })?;
        let filter = template
            .segments()
            .iter()
            .map(|s| match s {
                TopicSegment::Literal(text) => text.as_str(),
                TopicSegment::Any | TopicSegment::SensorId | TopicSegment::Metric => "+",
                TopicSegment::Rest => "#",
            })
            .collect::<Vec<_>>()
            .join("/");
        Ok(Self { template, filter })
    }

    /// The MQTT topic filter to subscribe to.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// Whether the template captures `{metric}`.
    pub fn has_metric(&self) -> bool {
        self.template.has_metric()
    }

    /// Matches a topic; placeholders never match an empty segment.
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Captures<'t>> {
        let mut parts = topic.split('/');
        let mut sensor_id = None;
        let mut metric = None;
        for segment in self.template.segments() {
            if *segment == TopicSegment::Rest {
                return sensor_id.map(|sensor_id| Captures { sensor_id, metric });
            }
            let part = parts.next()?;
            match segment {
                TopicSegment::Literal(text) if text != part => return None,
                TopicSegment::SensorId if part.is_empty() => return None,
                TopicSegment::SensorId => sensor_id = Some(part),
                TopicSegment::Metric if part.is_empty() => return None,
                TopicSegment::Metric => metric = Some(part),
                _ => {}
            }
        }
        if parts.next().is_some() {
            return None;
        }
        sensor_id.map(|sensor_id| Captures { sensor_id, metric })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_capture_whole_segments_and_become_plus_in_the_filter() {
        let t = Template::parse("sensors/{sensor_id}/{metric}").expect("valid");
        assert_eq!(t.filter(), "sensors/+/+");
        assert_eq!(
            t.matches("sensors/kitchen/temperature"),
            Some(Captures {
                sensor_id: "kitchen",
                metric: Some("temperature")
            })
        );
        assert_eq!(t.matches("sensors/kitchen"), None);
        assert_eq!(t.matches("sensors/kitchen/temperature/x"), None);
        assert_eq!(t.matches("sensors//temperature"), None);
        assert_eq!(t.matches("other/kitchen/temperature"), None);
    }

    #[test]
    fn a_trailing_hash_matches_the_rest_and_plus_any_one_segment() {
        let t = Template::parse("+/sensor/{sensor_id}/#").expect("valid");
        assert_eq!(t.filter(), "+/sensor/+/#");
        assert_eq!(
            t.matches("esp/sensor/s1/state").map(|c| c.sensor_id),
            Some("s1")
        );
        assert_eq!(t.matches("esp/sensor/s1").map(|c| c.sensor_id), Some("s1"));
        assert_eq!(t.matches("esp/other/s1"), None);
    }

    /// The config's rule, deeper topics included: what `check` refuses is refused here.
    #[test]
    fn bad_templates_are_refused_by_the_config_rule() {
        for bad in ["sensors/+x", "a/#/b", "a/{metric}", ""] {
            let error = Template::parse(bad).expect_err(bad);
            assert_eq!(Err(error.reason), TopicTemplate::parse(bad), "{bad}");
        }
        let seventeen = format!("{}/{{sensor_id}}", ["x"; 16].join("/"));
        assert!(Template::parse(&seventeen).is_err());
    }
}
