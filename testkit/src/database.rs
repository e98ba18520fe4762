//! Fresh PostgreSQL databases: one per test on the server of
//! `TEST_DATABASE_URL`, or one per purpose of a benchmark run on any server
//! (created with a name of their own, dropped when asked).

use anyhow::Context;
use sqlx::{Connection, PgConnection};

/// A database that exists for one test or one run only.
#[derive(Debug)]
pub struct Fresh {
    pub url: String,
    name: String,
    server: String,
}

impl Fresh {
    /// Creates an empty database on `server` named `{prefix}_{uuid}`.
    pub async fn create(server: &str, prefix: &str) -> anyhow::Result<Self> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let mut connection = PgConnection::connect(server)
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut connection)
            .await
            .context("creating a database (the role needs CREATEDB)")?;
        Ok(Self {
            url: with_database(server, &name),
            name,
            server: server.to_owned(),
        })
    }

    /// Drops the database, closing whatever is still connected.
    pub async fn drop_now(self) -> anyhow::Result<()> {
        let mut connection = PgConnection::connect(&self.server).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut connection)
        .await
        .with_context(|| format!("dropping database {}", self.name))?;
        Ok(())
    }
}

/// The server URL tests start from.
pub fn base_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://tally:tally@127.0.0.1:5432/tally".into())
}

/// Creates an empty database for a test and returns its URL.
pub async fn fresh() -> String {
    Fresh::create(&base_url(), "tally_test")
        .await
        .expect("create a test database on TEST_DATABASE_URL")
        .url
}

/// `url` with its database replaced by `name` (its query kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (server, rest) = url.rsplit_once('/').unwrap_or((url, ""));
    let query = rest
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{server}/{name}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_and_query_kept() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/tally?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
    }
}
