//! What a snapshot batch's rows are, in SQL: the one definition the adder's
//! relay publishes a batch by (its rows in this order, parts of `pack` rows)
//! and `totaler verify` audits it by (it recomputes the parts of a partly
//! applied batch from the same rows). Text only: this crate runs no query
//! and knows no database driver.
//!
//! Also what an outbox URL names: one database, possibly on several servers
//! (libpq's multi-host form, `servers`), of which the writable primary is
//! the one to use (`IS_PRIMARY`).

mod servers;

pub use servers::{Servers, split_urls};

/// `true` on a writable primary, `false` on a standby (hot standby or one
/// still recovering): what the adder and `totaler verify` ask a server
/// before they use it.
pub const IS_PRIMARY: &str = "SELECT NOT pg_is_in_recovery()";

/// The SQL condition on `outbox` rows that selects the snapshot pair `$1`
/// (lo) to `$2` (hi), both `pg_snapshot` text: rows inserted by a
/// transaction visible in `hi` and not in `lo`. A macro, so that queries can
/// be built from it with `concat!` as `&'static str`.
///
/// It gives the planner no range of the xid index on purpose: every query
/// built from it also bounds the ids (a batch's `first_id..=last_id`), and
/// the primary key over that range costs the batch. A range of xids from
/// `lo`'s xmin would read every row inserted since the oldest transaction
/// open at `lo` began, in any database of the server (issue 21, item 2).
#[macro_export]
macro_rules! outbox_in_pair {
    () => {
        "pg_visible_in_snapshot(xid, $2::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $1::pg_snapshot)"
    };
}

/// A batch's rows in publishing order, the same every time: the pair `$1`
/// (lo), `$2` (hi) with ids `$3..=$4`; columns `id`, `sum`, `created_us`
/// (microseconds since the epoch).
pub const BATCH_ROWS: &str = concat!(
    "SELECT id, sum, (extract(epoch FROM created_at) * 1000000)::bigint AS created_us \
     FROM outbox WHERE id BETWEEN $3 AND $4 AND ",
    outbox_in_pair!(),
    " ORDER BY id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_read_by_its_pair_and_id_range_in_id_order() {
        assert!(BATCH_ROWS.contains(outbox_in_pair!()));
        assert!(BATCH_ROWS.contains("id BETWEEN $3 AND $4"));
        assert!(BATCH_ROWS.ends_with("ORDER BY id"));
    }
}
