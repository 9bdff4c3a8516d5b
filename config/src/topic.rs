//! `[[iot.sensors]]` topic templates (`zigbee2mqtt/{sensor_id}`,
//! `sensors/{sensor_id}/{metric}`): their grammar and limits.
//!
//! The one owner of the rule: the validation (`check`) refuses what [`TopicTemplate::parse`]
//! refuses, and the IoT bridge (`run`) compiles its matchers from the same parse, so a
//! config that `check` passes never fails to start the bridge.

/// The most segments a template may have (deeper topics still match a trailing `#`).
pub const MAX_TOPIC_SEGMENTS: usize = 16;

/// One `/`-separated segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicSegment {
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

/// A valid topic template, as its segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    segments: Vec<TopicSegment>,
}

/// Why a text is not a topic template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicTemplateError {
    /// The template is empty.
    #[error("it is empty")]
    Empty,
    /// More than [`MAX_TOPIC_SEGMENTS`] segments.
    #[error(
        "it has {0} segments, more than {MAX_TOPIC_SEGMENTS} (end it with `#` to match deeper \
         topics)"
    )]
    TooManySegments(usize),
    /// A `#` that is not the last segment.
    #[error("`#` may only be the last segment")]
    HashNotLast,
    /// A segment with text and `+`, `#`, `{` or `}`.
    #[error("segment {0:?} mixes text with `+`, `#` or a placeholder")]
    Mixed(String),
    /// No `{sensor_id}` segment.
    #[error("it has no `{{sensor_id}}` segment")]
    NoSensorId,
    /// `{sensor_id}` more than once.
    #[error("`{{sensor_id}}` appears more than once")]
    SensorIdTwice,
    /// `{metric}` more than once.
    #[error("`{{metric}}` appears more than once")]
    MetricTwice,
}

impl TopicTemplate {
    /// Parses a template: `/`-separated literals, `+`, `{sensor_id}` (exactly once),
    /// `{metric}` (at most once) and a last `#`, at most [`MAX_TOPIC_SEGMENTS`] segments.
    pub fn parse(template: &str) -> Result<Self, TopicTemplateError> {
        if template.is_empty() {
            return Err(TopicTemplateError::Empty);
        }
        let count = template.split('/').count();
        if count > MAX_TOPIC_SEGMENTS {
            return Err(TopicTemplateError::TooManySegments(count));
        }
        let mut segments = Vec::with_capacity(count);
        let (mut sensor, mut metric) = (0, 0);
        for (index, part) in template.split('/').enumerate() {
            segments.push(match part {
                "{sensor_id}" => {
                    sensor += 1;
                    TopicSegment::SensorId
                }
                "{metric}" => {
                    metric += 1;
                    TopicSegment::Metric
                }
                "+" => TopicSegment::Any,
                "#" if index + 1 == count => TopicSegment::Rest,
                "#" => return Err(TopicTemplateError::HashNotLast),
                literal if literal.contains(['+', '#', '{', '}']) => {
                    return Err(TopicTemplateError::Mixed(literal.to_owned()))
                }
                literal => TopicSegment::Literal(literal.to_owned()),
            });
        }
        match (sensor, metric) {
            (0, _) => Err(TopicTemplateError::NoSensorId),
            (2.., _) => Err(TopicTemplateError::SensorIdTwice),
            (_, 2..) => Err(TopicTemplateError::MetricTwice),
            _ => Ok(Self { segments }),
        }
    }

    /// The segments, in order (at most [`MAX_TOPIC_SEGMENTS`]).
    pub fn segments(&self) -> &[TopicSegment] {
        &self.segments
    }

    /// Whether the template captures `{metric}`.
    pub fn has_metric(&self) -> bool {
        self.segments.contains(&TopicSegment::Metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_is_its_segments() {
        let t = TopicTemplate::parse("+/sensors/{sensor_id}/{metric}/#").expect("valid");
        assert_eq!(
            t.segments(),
            [
                TopicSegment::Any,
                TopicSegment::Literal("sensors".to_owned()),
                TopicSegment::SensorId,
                TopicSegment::Metric,
                TopicSegment::Rest,
            ]
        );
        assert!(t.has_metric());
        assert!(!TopicTemplate::parse("zigbee2mqtt/{sensor_id}")
            .expect("valid")
            .has_metric());
    }

    #[test]
    fn bad_templates_are_refused_with_their_reason() {
        use TopicTemplateError as E;
        for (bad, error) in [
            ("", E::Empty),
            ("sensors/+x", E::Mixed("+x".to_owned())),
            ("a/x{sensor_id}", E::Mixed("x{sensor_id}".to_owned())),
            ("a/#/b", E::HashNotLast),
            ("a/{metric}", E::NoSensorId),
            ("a/{sensor_id}/{sensor_id}", E::SensorIdTwice),
            ("a/{sensor_id}/{metric}/{metric}", E::MetricTwice),
        ] {
            assert_eq!(TopicTemplate::parse(bad), Err(error), "{bad}");
        }
    }

    #[test]
    fn at_most_16_segments() {
        let template = |n: usize| {
            let mut parts = vec!["x"; n - 1];
            parts.push("{sensor_id}");
            parts.join("/")
        };
        let sixteen = TopicTemplate::parse(&template(MAX_TOPIC_SEGMENTS)).expect("valid");
        assert_eq!(sixteen.segments().len(), MAX_TOPIC_SEGMENTS);
        assert_eq!(
            TopicTemplate::parse(&template(MAX_TOPIC_SEGMENTS + 1)),
            Err(TopicTemplateError::TooManySegments(17))
        );
    }
}
