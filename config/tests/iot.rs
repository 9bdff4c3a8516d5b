//! `[iot]` and `[[iot.sensors]]`: defaults, the operator's shorthand, and every problem at
//! once.

// `Jail::expect_with` closures must return `figment::Error`, which is large: its API.
#![allow(clippy::result_large_err)]

use std::path::Path;
use std::time::Duration;

use figment::Jail;
use nexus_config::{load, ErrorKind, MetricRule, MqttProtocol, PayloadFormat};
use nexus_policies::{Chain, Claims, Role, SecretKey, Token, TokenId, UnixTime, BUILD_FLOOR};

const MEMBER: &str = r#"
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
"#;

fn setup(jail: &mut Jail, config: &str) -> figment::error::Result<()> {
    jail.clear_env();
    let node = SecretKey::from_seed(&[7; 32]).expect("key");
    let root = SecretKey::from_seed(&[1; 32]).expect("key");
    jail.create_file("node.key", &node.to_file_text())?;
    let claims = Claims {
        id: TokenId([9; 16]),
        parent: None,
        issuer_key: root.public(),
        node_id: "edge-01".to_owned(),
        node_key: node.public(),
        tenant: None,
        role: Role::Member,
        publish: Vec::new(),
        receive: Vec::new(),
        not_before: BUILD_FLOOR,
        expires: UnixTime(BUILD_FLOOR.0 + 3600),
    };
    let token = Token::issue(claims, &root, None).expect("token");
    std::fs::write(
        "member.token",
        Chain::new(vec![token]).expect("chain").encode(),
    )
    .expect("write");
    jail.create_file("member.toml", config)?;
    Ok(())
}

/// A few lines of TOML give a working bridge: defaults, the `name = "unit"` shorthand, and
/// the payload format inferred from the topic.
#[test]
fn a_few_lines_of_iot_toml_give_rules_with_defaults() {
    Jail::expect_with(|jail| {
        let config = format!(
            "{MEMBER}\n[iot]\nurl = \"mqtt://127.0.0.1\"\n\n[[iot.sensors]]\ntopic = \"zigbee2mqtt/{{sensor_id}}\"\nmetrics = {{ temperature = \"°C\" }}\n\n[[iot.sensors]]\ntopic = \"tele/{{sensor_id}}/SENSOR\"\ntime = \"/Time\"\nmetrics.power = {{ pointer = \"/ENERGY/Power\", unit = \"W\" }}\n\n[[iot.sensors]]\ntopic = \"sensors/{{sensor_id}}/{{metric}}\"\n"
        );
        setup(jail, &config)?;
        let config = load(Path::new("member.toml")).unwrap_or_else(|e| panic!("{e}"));
        // What `check` prints loads back to the same [iot].
        jail.create_file("printed.toml", &config.redacted())?;
        let again = load(Path::new("printed.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.iot, config.iot);
        let iot = config.iot.expect("iot");
        assert_eq!(
            (iot.host.as_str(), iot.port, iot.tls.is_none()),
            ("127.0.0.1", 1883, true)
        );
        assert_eq!(iot.client_id, "nexus-edge-01");
        assert_eq!(iot.qos, 1);
        assert_eq!(iot.protocol, MqttProtocol::V311);
        assert_eq!(iot.max_payload, 65536);
        assert_eq!(iot.queue, 1024);
        assert_eq!(iot.keep_alive, Duration::from_secs(30));
        assert_eq!(iot.sensors.len(), 3);
        assert_eq!(iot.sensors[0].payload, PayloadFormat::Json);
        assert_eq!(
            iot.sensors[0].metrics,
            vec![MetricRule {
                name: "temperature".into(),
                pointer: "/temperature".into(),
                unit: "°C".into()
            }]
        );
        assert_eq!(iot.sensors[1].metrics[0].pointer, "/ENERGY/Power");
        assert_eq!(iot.sensors[1].time.as_deref(), Some("/Time"));
        assert_eq!(iot.sensors[2].payload, PayloadFormat::Number);
        assert!(iot.sensors[2].metrics.is_empty());
        Ok(())
    });
}

/// Every problem in `[iot]` and its rules is reported at once, each on its key.
#[test]
fn every_iot_problem_is_reported_at_once() {
    Jail::expect_with(|jail| {
        let config = format!(
            "{}\n[iot]\nurl = \"http://broker\"\nqos = 2\npassword = \"x\"\nmax_payload = 0\nqeue = 5\n\n[[iot.sensors]]\ntopic = \"zigbee2mqtt/+x\"\n\n[[iot.sensors]]\ntopic = \"a/{{metric}}\"\n\n[[iot.sensors]]\ntopic = \"z/{{sensor_id}}\"\npayload = \"xml\"\ntime = \"Time\"\nmetrics = {{ \"bad name\" = \"x\", t = {{ pointer = \"ENERGY\" }} }}\n\n[[iot.sensors]]\ntopic = \"z/{{sensor_id}}\"\n",
            MEMBER.replace("tenant = \"salon-001\"\n", "")
        );
        setup(jail, &config)?;
        let errors = load(Path::new("member.toml")).expect_err("refused");
        let keys: Vec<(String, ErrorKind)> = errors
            .iter()
            .map(|e| (e.key.clone().unwrap_or_default(), e.kind.clone()))
            .collect();
        let has = |key: &str| keys.iter().any(|(k, _)| k == key);
        for key in [
            "node.tenant",
            "iot.url",
            "iot.qos",
            "iot.username",
            "iot.max_payload",
            "iot.qeue",
            "iot.sensors[0].topic",
            "iot.sensors[1].topic",
            "iot.sensors[2].payload",
            "iot.sensors[2].time",
            "iot.sensors[2].metrics.bad name",
            "iot.sensors[2].metrics.t.pointer",
            "iot.sensors[3].metrics",
        ] {
            assert!(has(key), "no error on {key}: {errors}");
        }
        Ok(())
    });
}

/// A topic template has at most 16 segments, the bridge's fixed capacity: `check` refuses
/// a 17th on its key, with the same rule the bridge compiles templates with, so a config
/// that `check` passes cannot fail to start the bridge.
#[test]
fn a_topic_template_over_16_segments_is_refused() {
    Jail::expect_with(|jail| {
        let template = |segments: usize| {
            let mut parts = vec!["x"; segments - 1];
            parts.push("{sensor_id}");
            parts.join("/")
        };
        let config = |topic: &str| {
            format!(
                "{MEMBER}\n[iot]\nurl = \"mqtt://127.0.0.1\"\n\n[[iot.sensors]]\ntopic = \"{topic}\"\nmetrics = {{ temperature = \"°C\" }}\n"
            )
        };
        setup(jail, &config(&template(16)))?;
        let config16 = load(Path::new("member.toml")).expect("16 segments are fine");
        assert_eq!(config16.iot.expect("iot").sensors[0].topic, template(16));

        jail.create_file("member.toml", &config(&template(17)))?;
        let errors = load(Path::new("member.toml")).expect_err("17 segments are refused");
        assert_eq!(errors.kinds(), vec![ErrorKind::InvalidValue]);
        let error = errors
            .find("iot.sensors[0].topic")
            .expect("an error about iot.sensors[0].topic");
        assert!(
            error
                .message
                .contains("it has 17 segments, more than 16 (end it with `#` to match deeper"),
            "{error}"
        );
        Ok(())
    });
}

/// `[iot]` belongs to members: a hub or root with one is refused.
#[test]
fn iot_is_refused_outside_a_member() {
    Jail::expect_with(|jail| {
        let config = format!(
            "{}\n[local]\nurl = \"nats://127.0.0.1:4222\"\n\n[iot]\nurl = \"mqtt://127.0.0.1\"\n[[iot.sensors]]\ntopic = \"s/{{sensor_id}}/{{metric}}\"\n",
            MEMBER.replace("mode = \"member\"", "mode = \"hub\"")
        );
        setup(jail, &config)?;
        let errors = load(Path::new("member.toml")).expect_err("refused");
        assert!(errors
            .iter()
            .any(|e| e.kind == ErrorKind::ForbiddenSection && e.key.as_deref() == Some("iot")));
        Ok(())
    });
}

/// `protocol = "5"` (or the integer 5) selects MQTT 5, with a session expiry that defaults
/// to 7 days, can be set, and survives printing and loading back.
#[test]
fn mqtt5_is_chosen_with_protocol_and_has_a_session_expiry() {
    Jail::expect_with(|jail| {
        let rule = "\n[[iot.sensors]]\ntopic = \"s/{sensor_id}/{metric}\"\n";
        setup(
            jail,
            &format!("{MEMBER}\n[iot]\nurl = \"mqtt://127.0.0.1\"\nprotocol = \"5\"\n{rule}"),
        )?;
        let config = load(Path::new("member.toml")).unwrap_or_else(|e| panic!("{e}"));
        let iot = config.iot.clone().expect("iot");
        assert_eq!(iot.protocol, MqttProtocol::V5);
        assert_eq!(iot.session_expiry, Duration::from_secs(7 * 24 * 3600));
        jail.create_file("printed.toml", &config.redacted())?;
        let again = load(Path::new("printed.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.iot, config.iot);

        jail.create_file(
            "member.toml",
            &format!(
                "{MEMBER}\n[iot]\nurl = \"mqtt://127.0.0.1\"\nprotocol = 5\nsession_expiry = \"1h\"\n{rule}"
            ),
        )?;
        let iot = load(Path::new("member.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
            .iot
            .expect("iot");
        assert_eq!(
            (iot.protocol, iot.session_expiry),
            (MqttProtocol::V5, Duration::from_secs(3600))
        );
        Ok(())
    });
}

/// A wrong protocol, a session expiry with MQTT 3.1.1 or out of range, and a keep-alive
/// that rumqttc would refuse (it panics) are each reported on their key, with the fix,
/// together with the other problems.
#[test]
fn bad_protocol_and_session_expiry_are_reported_with_their_fix() {
    let rule = "\n[[iot.sensors]]\ntopic = \"s/{sensor_id}/{metric}\"\n";
    let cases = [
        (
            "protocol = \"3.1\"\nqos = 2\n",
            vec!["iot.protocol", "iot.qos"],
            "use \"3.1.1\"",
        ),
        (
            "protocol = \"6\"\n",
            vec!["iot.protocol"],
            "protocol = \"5\"",
        ),
        (
            "session_expiry = \"1h\"\n",
            vec!["iot.session_expiry"],
            "MQTT 5 setting",
        ),
        (
            "protocol = \"5\"\nsession_expiry = \"200y\"\n",
            vec!["iot.session_expiry"],
            "out of range",
        ),
        (
            "protocol = \"5\"\nkeep_alive = \"2s\"\n",
            vec!["iot.keep_alive"],
            "rumqttc's MQTT 5 client refuses less than 5 s",
        ),
        (
            "protocol = \"5\"\nsession_expiry = \"0s\"\n",
            vec!["iot.session_expiry"],
            "positive duration",
        ),
    ];
    for (keys, expected, fix) in cases {
        Jail::expect_with(|jail| {
            setup(
                jail,
                &format!("{MEMBER}\n[iot]\nurl = \"mqtt://127.0.0.1\"\n{keys}{rule}"),
            )?;
            let errors = load(Path::new("member.toml")).expect_err("refused");
            for key in &expected {
                assert!(
                    errors.iter().any(|e| e.key.as_deref() == Some(*key)),
                    "no error on {key} for {keys:?}: {errors}"
                );
            }
            assert!(
                errors.to_string().contains(fix),
                "{keys:?}: the fix {fix:?} is not in: {errors}"
            );
            Ok(())
        });
    }
}
