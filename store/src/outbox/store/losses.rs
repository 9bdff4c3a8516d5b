//! What numbering adds to the store: the epoch and its high-water number
//! (`outbox_meta`), and the record of the numbers given up until they are announced
//! (`outbox_losses`).

use rusqlite::{params, Connection, OptionalExtension as _};

use super::Store;
use crate::outbox::{LossKind, Losses};
use crate::sqlite::StoreError;

pub(super) fn kind_value(kind: LossKind) -> i64 {
    match kind {
        LossKind::Dropped => 0,
        LossKind::Expired => 1,
    }
}

pub(super) fn kind_of(value: i64) -> LossKind {
    if value == 0 {
        LossKind::Dropped
    } else {
        LossKind::Expired
    }
}

/// What a row given up was numbered: its number and epoch (`None`: the store's own), or
/// nothing.
pub(super) type GivenUp = (Option<i64>, Option<String>);

/// Consecutive losses of one epoch: (epoch, (first, last), count); epoch `None` and no
/// range for events without a number.
type Run = (Option<String>, Option<(i64, i64)>, i64);

impl Store {
    /// Writes down what was given up, to be announced: consecutive numbers of one epoch as
    /// one range (extending the newest range of that kind and epoch when they follow it and
    /// it was not handed out for an announcement), events without a number as a count.
    pub(super) fn record_losses(
        &mut self,
        kind: LossKind,
        gone: Vec<GivenUp>,
    ) -> Result<(), StoreError> {
        let context = "record what the outbox gave up";
        let mut runs: Vec<Run> = Vec::new();
        for (number, epoch) in gone {
            let epoch = number.map(|_| epoch.unwrap_or_else(|| self.epoch.clone()));
            match (runs.last_mut(), number) {
                (Some((e, Some((_, last)), count)), Some(n)) if *e == epoch && *last + 1 == n => {
                    *last = n;
                    *count += 1;
                }
                (Some((None, None, count)), None) => *count += 1,
                _ => runs.push((epoch, number.map(|n| (n, n)), 1)),
            }
        }
        let total: i64 = runs.iter().map(|(_, _, count)| count).sum();
        for (epoch, range, count) in runs {
            let newest: Option<(i64, Option<i64>)> = self
                .conn
                .prepare_cached(
                    "SELECT id, last FROM outbox_losses WHERE kind = ?1 AND epoch IS ?2 \
                     ORDER BY id DESC LIMIT 1",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![kind_value(kind), epoch], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()
                })
                .map_err(StoreError::sqlite(context))?;
            // A row handed out for an announcement stays as it was read.
            let newest = newest.filter(|(id, _)| *id > self.handed_out);
            let extends = match (newest, range) {
                (Some((id, Some(last))), Some((first, _))) if last + 1 == first => Some(id),
                (Some((id, None)), None) => Some(id),
                _ => None,
            };
            let (first, last) = range.unzip();
            match extends {
                Some(id) => self
                    .conn
                    .prepare_cached(
                        "UPDATE outbox_losses SET last = ?2, count = count + ?3 WHERE id = ?1",
                    )
                    .and_then(|mut stmt| stmt.execute(params![id, last, count])),
                None => self
                    .conn
                    .prepare_cached(
                        "INSERT INTO outbox_losses (kind, epoch, first, last, count) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![kind_value(kind), epoch, first, last, count])
                    }),
            }
            .map_err(StoreError::sqlite(context))?;
        }
        *self.snap.unannounced(kind) += total.max(0) as u64;
        Ok(())
    }

    /// Removes loss rows that an announcement carries.
    pub(super) fn settle(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        let context = "settle announced losses";
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM outbox_losses WHERE id = ?1 RETURNING kind, count")
            .map_err(StoreError::sqlite(context))?;
        for id in ids {
            let gone: Option<(i64, i64)> = stmt
                .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
                .map_err(StoreError::sqlite(context))?;
            if let Some((kind, count)) = gone {
                let pending = self.snap.unannounced(kind_of(kind));
                *pending = pending.saturating_sub(count.max(0) as u64);
            }
        }
        Ok(())
    }

    /// What was given up of `kind` and is not announced yet: the events without a number,
    /// and the ranges of the epoch given up first, at most `max_ranges` of them (the lowest);
    /// `None` if nothing is waiting.
    pub fn losses(
        &mut self,
        kind: LossKind,
        max_ranges: usize,
    ) -> Result<Option<Losses>, StoreError> {
        let context = "read what the outbox gave up";
        let kind_v = kind_value(kind);
        let mut ids = Vec::new();
        let mut unnumbered = 0u64;
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT id, count FROM outbox_losses WHERE kind = ?1 AND epoch IS NULL",
                )
                .map_err(StoreError::sqlite(context))?;
            let rows = stmt
                .query_map([kind_v], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(StoreError::sqlite(context))?;
            for (id, count) in rows {
                ids.push(id);
                unnumbered += count.max(0) as u64;
            }
        }
        let epoch: Option<String> = self
            .conn
            .prepare_cached(
                "SELECT epoch FROM outbox_losses WHERE kind = ?1 AND epoch IS NOT NULL \
                 ORDER BY id LIMIT 1",
            )
            .and_then(|mut stmt| stmt.query_row([kind_v], |row| row.get(0)).optional())
            .map_err(StoreError::sqlite(context))?;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        if let Some(epoch) = &epoch {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT id, first, last FROM outbox_losses WHERE kind = ?1 AND epoch = ?2 \
                     ORDER BY first, id",
                )
                .map_err(StoreError::sqlite(context))?;
            let mut rows = stmt
                .query(params![kind_v, epoch])
                .map_err(StoreError::sqlite(context))?;
            while let Some(row) = rows.next().map_err(StoreError::sqlite(context))? {
                let id: i64 = row.get(0).map_err(StoreError::sqlite(context))?;
                let first: Option<i64> = row.get(1).map_err(StoreError::sqlite(context))?;
                let last: Option<i64> = row.get(2).map_err(StoreError::sqlite(context))?;
                let (Some(first), Some(last)) = (first, last) else {
                    continue;
                };
                let (first, last) = (first.max(0) as u64, last.max(0) as u64);
                let full = ranges.len() >= max_ranges.max(1);
                match ranges.last_mut() {
                    Some((_, end)) if first <= end.saturating_add(1) => *end = (*end).max(last),
                    _ if full => break,
                    _ => ranges.push((first, last)),
                }
                ids.push(id);
            }
        }
        if ids.is_empty() {
            return Ok(None);
        }
        self.handed_out = self.handed_out.max(ids.iter().copied().max().unwrap_or(0));
        Ok(Some(Losses {
            kind,
            epoch,
            ranges,
            unnumbered,
            ids,
        }))
    }
}

/// The epoch and the highest number committed, from `outbox_meta`; a database without
/// them (new, or upgraded from version 1) gets a fresh UUIDv7 epoch starting at 0. The
/// number is never below that of a row of the epoch (a guard: both are written in the same
/// transaction).
pub(super) fn read_or_make_epoch(conn: &Connection) -> Result<(String, u64), StoreError> {
    let context = "read the outbox's epoch";
    let meta: Option<(String, i64)> = conn
        .query_row(
            "SELECT epoch, last_number FROM outbox_meta WHERE id = 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(StoreError::sqlite(context))?;
    let (epoch, last) = match meta {
        Some((epoch, last)) => {
            let valid = uuid::Uuid::try_parse(&epoch)
                .is_ok_and(|id| id.get_version_num() == 7 && id.hyphenated().to_string() == epoch);
            if !valid {
                return Err(StoreError::Corrupt {
                    path: "outbox_meta".into(),
                    detail: format!("the epoch {epoch:?} is not a lower-case UUIDv7"),
                });
            }
            (epoch, last)
        }
        None => {
            let epoch = uuid::Uuid::now_v7().hyphenated().to_string();
            conn.execute(
                "INSERT INTO outbox_meta (id, epoch, last_number) VALUES (1, ?1, 0)",
                [&epoch],
            )
            .map_err(StoreError::sqlite("make the outbox's epoch"))?;
            (epoch, 0)
        }
    };
    let highest: Option<i64> = conn
        .query_row(
            "SELECT max(number) FROM outbox WHERE epoch IS NULL",
            [],
            |row| row.get(0),
        )
        .map_err(StoreError::sqlite(context))?;
    Ok((epoch, last.max(highest.unwrap_or(0)).max(0) as u64))
}
