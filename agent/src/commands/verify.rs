//! Verification of a command before anything is done with it: shape and signature,
//! freshness, issued since this agent started, the issuer's grant and its place above this
//! node, replay.

use std::time::Instant;

use nexus_federation::command::{self, OpenedCommand};
use nexus_federation::refusal::{Reason, Rejection};
use nexus_federation::trust::Admitted;
use nexus_policies::Role;

use super::{CommandService, Refused};

impl CommandService {
    /// Every check of a command that needs no action: shape and signature, freshness,
    /// replay, the issuer's grant (`target_tenant` as in `Gatekeeper::admit_command`).
    pub(super) fn verify(
        &self,
        message: &async_nats::Message,
        target_tenant: Option<Option<&str>>,
    ) -> Result<OpenedCommand, Refused> {
        let command = command::open(
            message.subject.as_str(),
            message.headers.as_ref(),
            message.payload.clone(),
        )
        .map_err(|r| (r, None))?;
        let with = |r: Rejection| (r, Some(Box::new(command.envelope.clone())));
        let now = self.gatekeeper.now().map_err(with)?;
        command::check_fresh(&command, now, self.skew).map_err(with)?;
        let skew = time::Duration::try_from(self.skew).unwrap_or(time::Duration::MAX);
        if command
            .issued()
            .checked_add(skew)
            .is_some_and(|t| t < self.started_wall)
        {
            return Err(with(Rejection::new(
                Reason::CommandStale,
                "issued before this agent started; send it again",
            )));
        }
        let admitted = self
            .gatekeeper
            .admit_command(
                &command.event,
                &command.envelope,
                command.chain.as_ref(),
                &command.subject,
                target_tenant,
            )
            .map_err(with)?;
        // Only a node above this one in the tree (or a root) commands it: a hub's token
        // grants `_nexus.cmd.>`, but a sibling hub is not this node's ancestor.
        if let Admitted::Node(grant) = &admitted {
            if grant.role() != Role::Root && !self.rotation.own.has_ancestor(grant.node_key()) {
                return Err(with(Rejection::new(
                    Reason::CommandNotAllowed,
                    format!(
                        "node `{}` is not above node `{}` in the tree",
                        grant.node_id(),
                        self.node_id
                    ),
                )));
            }
        }
        let until = Instant::now() + command.remaining(now) + self.skew;
        self.replay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(&command.envelope.event_id, until, Instant::now())
            .map_err(with)?;
        Ok(command)
    }
}
