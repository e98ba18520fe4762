//! Whether each outbox database's recorded list of databases agrees with
//! this adder's `DATABASE_URL` list, which decides whether the database
//! takes Adds with a request id (`routing::Agreement`). A request id is
//! routed by its hash to one position of the list, so two adders whose
//! lists put different databases at a position would record a retry twice.
//!
//! - Each database has a member id; the list is the member ids in order,
//!   recorded in every database by the first adder that has opened all of
//!   them (or replaced by a reshard). Until then no database takes Adds
//!   with a request id (Adds without one need no list).
//! - A database agrees when it is still the database this adder opened (its
//!   member id), and its recorded list has this adder's count and, at every
//!   position this adder has opened, the same member. A difference found
//!   while opening stops the adder (fatal, as a wrong place does); one found
//!   by the periodic re-check (an operator resharded and this adder was
//!   forgotten, or a URL now reaches another database) refuses Adds with a
//!   request id on that database and takes the adder out of readiness.
//!
//! The SQL lives in `outbox::position`; this owns the comparison.

use uuid::Uuid;

use crate::{
    outbox::{self, Membership, Outbox, disagreement},
    routing::{Agreement, Outboxes, Slot},
};

/// Agrees on the list as database `index` opens (`opened`, its member id
/// already set, not yet taking Adds): records it in every database once
/// all are open (replacing a recorded one if `reshard`), and judges the
/// open ones before. A disagreement is fatal (`outbox::Error::Misplaced`).
pub async fn settle(
    outboxes: &Outboxes,
    index: usize,
    opened: &Outbox,
    reshard: bool,
) -> Result<(), outbox::Error> {
    let known = known(outboxes);
    let open = |i: usize| {
        if i == index {
            Some(opened)
        } else {
            outboxes.slots()[i].outbox.get()
        }
    };
    let list = known.iter().copied().collect::<Option<Vec<Uuid>>>();
    for (i, slot) in outboxes.slots().iter().enumerate() {
        let Some(outbox) = open(i) else { continue };
        let agreement = match &list {
            Some(list) => {
                outbox.agree_members(list, reshard).await?;
                Agreement::Agreed
            }
            None => judge(i, &outbox.membership().await?, &known),
        };
        if let Agreement::Refused(why) = agreement {
            return Err(outbox::Error::Misplaced(why));
        }
        set(slot, agreement);
    }
    Ok(())
}

/// Judges database `index` again from what it records now (the periodic
/// re-check), recording the list if none is and every database is open (a
/// first recording that failed); a database that does not answer keeps its
/// agreement.
pub async fn recheck(outboxes: &Outboxes, index: usize) {
    let slot = &outboxes.slots()[index];
    let Some(outbox) = slot.outbox.get() else {
        return;
    };
    let known = known(outboxes);
    let Ok(recorded) = outbox.membership().await else {
        return;
    };
    let mut agreement = judge(index, &recorded, &known);
    if let (Agreement::Pending, Some(list)) = (
        &agreement,
        known.iter().copied().collect::<Option<Vec<Uuid>>>(),
    ) {
        agreement = match outbox.agree_members(&list, false).await {
            Ok(()) => Agreement::Agreed,
            Err(outbox::Error::Misplaced(why)) => Agreement::Refused(why),
            Err(_) => Agreement::Pending,
        };
    }
    set(slot, agreement);
}

/// The member id of each database this adder has opened, in list order.
fn known(outboxes: &Outboxes) -> Vec<Option<Uuid>> {
    outboxes
        .slots()
        .iter()
        .map(|slot| slot.member.get().copied())
        .collect()
}

/// Whether what database `index` records agrees with the adder's list as
/// far as it is known (see the module docs).
pub fn judge(index: usize, recorded: &Membership, known: &[Option<Uuid>]) -> Agreement {
    let opened = known.get(index).copied().flatten();
    if opened.is_some_and(|member| member != recorded.member) {
        return Agreement::Refused(format!(
            "the outbox database at position {} of DATABASE_URL is no longer the database this \
             adder opened (member id {}, now {}): its URL reaches another database; restart the \
             adder with the right DATABASE_URL",
            index + 1,
            opened.unwrap_or_default(),
            recorded.member
        ));
    }
    let Some(members) = &recorded.members else {
        return Agreement::Pending;
    };
    let differs = members.len() != known.len()
        || known
            .iter()
            .zip(members)
            .any(|(mine, theirs)| mine.is_some_and(|mine| mine != *theirs));
    if differs {
        let mine: Vec<Uuid> = known.iter().map(|m| m.unwrap_or_default()).collect();
        return Agreement::Refused(disagreement(members, &mine));
    }
    Agreement::Agreed
}

/// Sets a slot's agreement, logging a change.
fn set(slot: &Slot, agreement: Agreement) {
    let before = slot.set_agreement(agreement.clone());
    if before == agreement {
        return;
    }
    match &agreement {
        Agreement::Refused(why) => tracing::error!(database = %slot.place, error = %why,
            "the outbox database's list of databases disagrees with this adder's: Adds with a request id are refused on it"),
        Agreement::Agreed => {
            tracing::info!(database = %slot.place, "the outbox database's list of databases agrees with this adder's")
        }
        Agreement::Pending => {
            tracing::warn!(database = %slot.place, "the outbox database records no list of databases: Adds with a request id wait for one")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u128) -> Vec<Uuid> {
        (1..=n).map(Uuid::from_u128).collect()
    }

    fn recorded(member: u128, members: Option<Vec<Uuid>>) -> Membership {
        Membership {
            member: Uuid::from_u128(member),
            members,
        }
    }

    #[test]
    fn a_database_agrees_when_its_list_matches_every_known_member() {
        let known = vec![Some(Uuid::from_u128(1)), None, Some(Uuid::from_u128(3))];
        assert_eq!(
            judge(0, &recorded(1, Some(ids(3))), &known),
            Agreement::Agreed
        );
        assert_eq!(judge(0, &recorded(1, None), &known), Agreement::Pending);
    }

    #[test]
    fn another_member_at_a_known_position_or_another_count_is_refused() {
        let known = vec![Some(Uuid::from_u128(1)), Some(Uuid::from_u128(9))];
        let refused = judge(0, &recorded(1, Some(ids(2))), &known);
        assert!(matches!(refused, Agreement::Refused(why) if why.contains("DATABASE_URL lists")));
        let known = vec![Some(Uuid::from_u128(1)), Some(Uuid::from_u128(2))];
        assert!(matches!(
            judge(0, &recorded(1, Some(ids(3))), &known),
            Agreement::Refused(_)
        ));
    }

    #[test]
    fn a_url_that_now_reaches_another_database_is_refused() {
        let known = vec![Some(Uuid::from_u128(1)), Some(Uuid::from_u128(2))];
        let refused = judge(1, &recorded(7, Some(ids(2))), &known);
        assert!(matches!(refused, Agreement::Refused(why) if why.contains("position 2")));
    }
}
