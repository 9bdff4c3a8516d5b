//! Topic templates: `zigbee2mqtt/{sensor_id}`, `sensors/{sensor_id}/{metric}`.
//!
//! A template is compiled once from the config into segments; matching a topic walks both
//! without allocating (the captures borrow from the topic).

use heapless::Vec as HVec;

/// The most segments a template may have (deeper topics still match a trailing `#`).
pub const MAX_SEGMENTS: usize = 16;

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Must equal the topic's segment.
    Literal(String),
    /// `+`: any one segment.
    Any,
    /// `{sensor_id}`.
    SensorId,
    /// `{metric}`.
    Metric,
    /// `#` (last): the rest, possibly nothing.
    Rest,
}

/// A compiled topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: HVec<Segment, MAX_SEGMENTS>,
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

/// Why a template was refused (the config validation reports the same problems first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic template {template:?}: {reason}")]
pub struct TemplateError {
    /// The template.
    pub template: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl Template {
    /// Compiles a template.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let error = |reason| TemplateError {
            template: template.to_owned(),
            reason,
        };
        let parts: Vec<&str> = template.split('/').collect();
        let mut segments = HVec::new();
        let (mut sensor, mut metric) = (0, 0);
        for (index, part) in parts.iter().enumerate() {
            let segment = match *part {
                "{sensor_id}" => {
                    sensor += 1;
                    Segment::SensorId
                }
                "{metric}" => {
                    metric += 1;
                    Segment::Metric
                }
                "+" => Segment::Any,
                "#" if index + 1 == parts.len() => Segment::Rest,
                "#" => return Err(error("`#` may only be the last segment")),
                literal if literal.contains(['+', '#', '{', '}']) => {
                    return Err(error("a segment mixes text with `+`, `#` or a placeholder"))
                }
                literal => Segment::Literal(literal.to_owned()),
            };
            segments
                .push(segment)
                .map_err(|_| error("more than 16 segments"))?;
        }
        if sensor != 1 {
            return Err(error("it needs exactly one `{sensor_id}` segment"));
        }
        if metric > 1 {
            return Err(error("`{metric}` appears more than once"));
        }
        let filter = segments
            .iter()
            .map(|s| match s {
                Segment::Literal(text) => text.as_str(),
                Segment::Any | Segment::SensorId | Segment::Metric => "+",
                Segment::Rest => "#",
            })
            .collect::<Vec<_>>()
            .join("/");
        Ok(Self { segments, filter })
    }

    /// The MQTT topic filter to subscribe to.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// Whether the template captures `{metric}`.
    pub fn has_metric(&self) -> bool {
        self.segments.contains(&Segment::Metric)
    }

    /// Matches a topic; placeholders never match an empty segment.
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Captures<'t>> {
        let mut parts = topic.split('/');
        let mut sensor_id = None;
        let mut metric = None;
        for segment in &self.segments {
            if *segment == Segment::Rest {
                return sensor_id.map(|sensor_id| Captures { sensor_id, metric });
            }
            let part = parts.next()?;
            match segment {
                Segment::Literal(text) if text != part => return None,
                Segment::SensorId if part.is_empty() => return None,
                Segment::SensorId => sensor_id = Some(part),
                Segment::Metric if part.is_empty() => return None,
                Segment::Metric => metric = Some(part),
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

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "sensors/+x",
            "a/#/b",
            "a/{metric}",
            "a/{sensor_id}/{sensor_id}",
            "a/{sensor_id}/{metric}/{metric}",
            "a/x{sensor_id}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
