//! The servers an outbox URL names. One database may be reachable on several
//! servers (a primary and its standbys, any of which a manager such as
//! Patroni may promote), written in libpq's multi-host form:
//! `postgres://user:password@host1:5432,host2:5433/db?target_session_attrs=read-write`.
//! This splits it into one single-host URL per server, in the given order,
//! for drivers (sqlx) that take one host. Text only: no connection is made.

/// The servers of one outbox database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers {
    /// One URL per server, each with the same user, database and parameters
    /// (`target_session_attrs` taken out: libpq's, not the driver's).
    pub urls: Vec<String>,
    /// The URL's `target_session_attrs`, if it had one.
    pub target_session_attrs: Option<String>,
}

impl Servers {
    /// Splits `url` (one host or several, comma-separated); a URL that is
    /// not `scheme://...` is returned as it is, for the driver to judge.
    pub fn parse(url: &str) -> Self {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Self {
                urls: vec![url.to_owned()],
                target_session_attrs: None,
            };
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        };
        let (tail, target_session_attrs) = take_param(tail, "target_session_attrs");
        let urls = hosts
            .split(',')
            .map(|host| format!("{scheme}://{userinfo}{host}{tail}"))
            .collect();
        Self {
            urls,
            target_session_attrs,
        }
    }
}

/// Splits a list of outbox URLs, each of which may itself be a multi-host
/// URL: they are separated by whitespace (a URL has none), or by a comma
/// where `postgres://` or `postgresql://` follows it (a comma inside one
/// URL separates its servers). Empty entries are dropped.
pub fn split_urls(list: &str) -> Vec<String> {
    list.split_whitespace().flat_map(split_commas).collect()
}

/// One whitespace-free entry, split where a comma starts a new URL.
fn split_commas(list: &str) -> Vec<String> {
    let mut urls = Vec::new();
    let mut start = 0;
    for (comma, _) in list.match_indices(',') {
        let next = &list[comma + 1..];
        if next.starts_with("postgres://") || next.starts_with("postgresql://") {
            urls.push(list[start..comma].to_owned());
            start = comma + 1;
        }
    }
    urls.push(list[start..].to_owned());
    urls
}

/// `tail` (path and query) without the query parameter `name`, and its value.
fn take_param(tail: &str, name: &str) -> (String, Option<String>) {
    let Some((path, query)) = tail.split_once('?') else {
        return (tail.to_owned(), None);
    };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((key, v)) if key == name => {
                value = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    if kept.is_empty() {
        (path.to_owned(), value)
    } else {
        (format!("{path}?{}", kept.join("&")), value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_host_url_becomes_one_url_per_host_with_the_same_user_and_database() {
        let servers = Servers::parse(
            "postgres://tally:pw@10.0.0.1:5432,10.0.0.2:5433/tally?sslmode=disable&target_session_attrs=read-write",
        );
        assert_eq!(
            servers.urls,
            [
                "postgres://tally:pw@10.0.0.1:5432/tally?sslmode=disable",
                "postgres://tally:pw@10.0.0.2:5433/tally?sslmode=disable",
            ]
        );
        assert_eq!(servers.target_session_attrs.as_deref(), Some("read-write"));
    }

    #[test]
    fn a_single_host_url_is_kept_as_it_is() {
        let url = "postgres://tally:tally@127.0.0.1:5432/tally";
        let servers = Servers::parse(url);
        assert_eq!(servers.urls, [url]);
        assert_eq!(servers.target_session_attrs, None);
    }

    #[test]
    fn hosts_without_user_or_path_are_split_too() {
        let servers = Servers::parse("postgresql://a,b:6000?target_session_attrs=primary");
        assert_eq!(servers.urls, ["postgresql://a", "postgresql://b:6000"]);
        assert_eq!(servers.target_session_attrs.as_deref(), Some("primary"));
    }

    #[test]
    fn a_list_of_urls_splits_only_where_a_new_url_starts() {
        assert_eq!(
            split_urls("postgres://u@a:1,b:2/x,postgresql://u@c/y,postgres://d/z"),
            [
                "postgres://u@a:1,b:2/x",
                "postgresql://u@c/y",
                "postgres://d/z"
            ]
        );
        assert_eq!(split_urls("postgres://a/x"), ["postgres://a/x"]);
    }

    #[test]
    fn a_list_of_urls_splits_at_whitespace_too_and_drops_empty_entries() {
        assert_eq!(
            split_urls(
                " postgres://u@a:1,b:2/x\n\tpostgresql://u@c/y  postgres://d/z,postgres://e/w "
            ),
            [
                "postgres://u@a:1,b:2/x",
                "postgresql://u@c/y",
                "postgres://d/z",
                "postgres://e/w"
            ]
        );
        assert!(split_urls("  ").is_empty());
    }
}
