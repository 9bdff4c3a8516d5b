//! `nexus-agent trace EVENT_ID -c root.toml`: where an event is, from every tier's own
//! answer to a signed `agent.trace` command (its outbox, dead letters, ingress, journal),
//! asked at once, each within the timeout; a tier that cannot be asked is named as such.
//! Exits 0 when the event landed in the root's journal, 1 otherwise.

use std::time::Duration;

use anyhow::bail;
use nexus_config::{Config, Mode};
use nexus_federation::command;
use serde_json::{json, Map, Value};

use crate::commands::TRACE;
use crate::fleet_cmd;
use crate::request_cmd::{error_of, Asker};

/// What one node said, or why it could not be asked.
type Answer = Result<Map<String, Value>, String>;

/// `trace`: prints every node's answer; `Ok(true)` when the event landed.
pub async fn trace(
    config: &Config,
    event_id: &str,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<bool> {
    if config.node.mode != Mode::Root {
        bail!(
            "`trace` asks every tier from the root: run it with the root's config (this one is a {})",
            config.node.mode
        );
    }
    let asker = Asker::connect(config, "trace").await?;
    let rows = fleet_cmd::read(asker.jetstream(), config).await?;
    let mut nodes: Vec<(String, String)> = vec![(config.node.id.clone(), "root".to_owned())];
    // Hubs before members, each by id: the order an event travels, backwards.
    let mut others: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r.node_id != config.node.id)
        .map(|r| (r.node_id.clone(), r.mode.clone()))
        .collect();
    others.sort_by(|a, b| (a.1 != "hub", &a.0).cmp(&(b.1 != "hub", &b.0)));
    nodes.extend(others);
    let answers = futures::future::join_all(nodes.iter().map(|(node, _)| {
        let asker = &asker;
        async move {
            let mut data = Map::new();
            data.insert("event_id".into(), json!(event_id));
            match asker.ask(node, TRACE, data, timeout).await {
                Ok((_, reply)) if command::is_ok(&reply) => Ok(reply.payload),
                Ok((_, reply)) => Err(format!("refused: {}", error_of(&reply))),
                Err(error) => Err(format!("{error:#}")),
            }
        }
    }))
    .await;
    let landed = answers.iter().any(|a| {
        a.as_ref()
            .is_ok_and(|a| a.get("journal").and_then(|j| j.get("found")) == Some(&json!(true)))
    });
    if json {
        let all: Vec<Value> = nodes
            .iter()
            .zip(&answers)
            .map(|((node, mode), answer)| match answer {
                Ok(answer) => json!({"node_id": node, "mode": mode, "answer": answer}),
                Err(error) => json!({"node_id": node, "mode": mode, "not_asked": error}),
            })
            .collect();
        println!("{}", Value::Array(all));
    } else {
        println!("event {event_id}:");
        for ((node, mode), answer) in nodes.iter().zip(&answers) {
            println!("{}", describe(node, mode, answer));
        }
        println!(
            "{}",
            if landed {
                "landed at the root."
            } else {
                "not landed at the root (yet)."
            }
        );
    }
    Ok(landed)
}

/// One node's answer as a line: what it holds, or why it could not be asked.
pub fn describe(node: &str, mode: &str, answer: &Answer) -> String {
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => return format!("  {node} ({mode}): could not be asked: {error}"),
    };
    let mut parts = Vec::new();
    for (key, what) in [("journal", "landed in"), ("ingress", "in the ingress")] {
        if let Some(stream) = answer.get(key) {
            let name = stream["stream"].as_str().unwrap_or("?");
            parts.push(if stream["found"] == json!(true) {
                format!(
                    "{what} {name} (sequence {}, stored {})",
                    stream["sequence"],
                    stream["stored_at"].as_str().unwrap_or("?")
                )
            } else if let Some(error) = stream["error"].as_str() {
                format!("{name} not searched to the end: {error}")
            } else if stream["complete"] == json!(false) {
                format!(
                    "not in the first {} messages of {name} from its creation time",
                    stream["scanned"]
                )
            } else {
                format!("not in {name}")
            });
        }
    }
    let outbox = &answer["outbox"];
    parts.push(if outbox["waiting"] == json!(true) {
        format!(
            "waiting in the outbox since {} ({})",
            outbox["queued_at"].as_str().unwrap_or("?"),
            outbox["priority"].as_str().unwrap_or("?")
        )
    } else if let Some(error) = outbox["error"].as_str() {
        format!("outbox unreadable: {error}")
    } else {
        "not in the outbox".to_owned()
    });
    match answer.get("dead_letters").and_then(Value::as_array) {
        Some(letters) if !letters.is_empty() => {
            for letter in letters {
                parts.push(format!(
                    "dead letter at {} ({}: {}; {} attempts, last {})",
                    letter["stage"].as_str().unwrap_or("?"),
                    letter["reason"].as_str().unwrap_or("?"),
                    letter["detail"].as_str().unwrap_or(""),
                    letter["attempts"],
                    letter["last_at"].as_str().unwrap_or("?")
                ));
            }
        }
        Some(_) => parts.push("no dead letter".to_owned()),
        None => parts.push("dead letters unreadable".to_owned()),
    }
    format!("  {node} ({mode}): {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_reads_as_one_line_per_node() {
        let root = json!({
            "journal": {"stream": "NEXUS_EVENTS", "found": true, "sequence": 42, "stored_at": "T"},
            "ingress": {"stream": "NEXUS_INGRESS", "found": false, "scanned": 3, "complete": true},
            "outbox": {"waiting": false},
            "dead_letters": [],
        });
        let Value::Object(root) = root else {
            unreachable!()
        };
        assert_eq!(
            describe("root", "root", &Ok(root)),
            "  root (root): landed in NEXUS_EVENTS (sequence 42, stored T); not in \
             NEXUS_INGRESS; not in the outbox; no dead letter"
        );
        let hub = json!({
            "ingress": {"stream": "NEXUS_INGRESS", "found": false, "scanned": 200000, "complete": false},
            "outbox": {"waiting": true, "queued_at": "Q", "priority": "bulk"},
            "dead_letters": [{"stage": "ingress", "reason": "acl_denied", "detail": "d", "attempts": 2, "last_at": "L"}],
        });
        let Value::Object(hub) = hub else {
            unreachable!()
        };
        assert_eq!(
            describe("hub-1", "hub", &Ok(hub)),
            "  hub-1 (hub): not in the first 200000 messages of NEXUS_INGRESS from its \
             creation time; waiting in the outbox since Q (bulk); dead letter at ingress \
             (acl_denied: d; 2 attempts, last L)"
        );
        assert_eq!(
            describe("edge-1", "member", &Err("no reply".into())),
            "  edge-1 (member): could not be asked: no reply"
        );
    }
}
