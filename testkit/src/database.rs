//! Fresh PostgreSQL databases, one per test, on the server of
//! `TEST_DATABASE_URL`.

use sqlx::{Connection, PgConnection};

/// The server URL tests start from.
pub fn base_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://tally:tally@127.0.0.1:5432/tally".into())
}

/// Creates an empty database and returns its URL.
pub async fn fresh() -> String {
    let base = base_url();
    let name = format!("tally_test_{}", uuid::Uuid::new_v4().simple());
    let mut connection = PgConnection::connect(&base)
        .await
        .expect("connect to TEST_DATABASE_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut connection)
        .await
        .expect("create a test database");
    with_database(&base, &name)
}

/// `url` with its database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (server, rest) = url.rsplit_once('/').expect("a database URL has a path");
    let query = rest
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{server}/{name}{query}")
}
