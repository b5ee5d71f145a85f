//! The URL payhook opens PostgreSQL sessions with, and what of a URL may be logged.

/// libpq's TCP keepalives, unless the URL sets its own: a peer that vanished (a network black
/// hole, a host that died) is noticed in about a minute rather than never.
const PG_KEEPALIVES: [(&str, &str); 4] = [
    ("keepalives", "1"),
    ("keepalives_idle", "30"),
    ("keepalives_interval", "10"),
    ("keepalives_count", "3"),
];

/// The URL payhook connects to PostgreSQL with: the user's, plus libpq's keepalives where it sets
/// none. They are client-side settings, so a connection pooler in between sees nothing new.
///
/// The URL is extended as text, not through a URL parser: libpq also takes URLs no WHATWG parser
/// does (several hosts, `postgresql://user@/db` for a local socket).
pub(super) fn postgresql_session_url(url: &str) -> String {
    let (head, fragment) = url
        .split_once('#')
        .map_or((url, None), |(h, f)| (h, Some(f)));
    let given = head.split_once('?').map_or("", |(_, query)| query);
    let key_of = |pair: &str| pair.split('=').next().unwrap_or_default().to_owned();
    let missing: Vec<String> = PG_KEEPALIVES
        .iter()
        .filter(|(key, _)| !given.split('&').any(|pair| key_of(pair) == *key))
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let mut extended = head.to_owned();
    if !missing.is_empty() {
        let separator = if !head.contains('?') {
            "?"
        } else if given.is_empty() || given.ends_with('&') {
            ""
        } else {
            "&"
        };
        extended.push_str(separator);
        extended.push_str(&missing.join("&"));
    }
    if let Some(fragment) = fragment {
        extended.push('#');
        extended.push_str(fragment);
    }
    extended
}
/// [`DatabaseUrl::redacted`] for a URL that does not parse: the scheme, whatever follows the
/// last `@` (the hosts) up to the query, and nothing of the user or password.
pub(super) fn redacted_by_hand(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "a database URL that does not parse".to_owned();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let hosts_and_path = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    format!("{scheme}://{hosts_and_path}")
}
