//! Better words for the mistakes people make most in `proxy.toml`, where serde's own message
//! is correct but unhelpful: a misspelt key gets the nearest valid name ("did you mean
//! `deadline`?") instead of the list of every key; a bare number for a duration says to
//! write `"30s"`; `[listen]` for `[[listen]]` (and the other way round) says which to write.
//! Everything else keeps serde's message.

use std::ops::Range;

/// Keys whose values are durations (strings with a unit).
const DURATION_KEYS: [&str; 15] = [
    "deadline",
    "grace",
    "retry_after",
    "idle_linger",
    "close_timeout",
    "close_spread",
    "handshake_timeout",
    "connect_timeout",
    "timeout",
    "hold",
    "connect_retry",
    "stop_timeout",
    "ready_timeout",
    "header_read_timeout",
    "idle_timeout",
];

/// Tables that are lists (`[[name]]`) at the top level.
const LISTS: [&str; 2] = ["listen", "route"];

/// Tables that are single tables (`[name]`) at the top level.
const TABLES: [&str; 3] = ["drain", "admin", "limits"];

/// serde's `message` about the value at `span` of `text`, said better, if it is one of the
/// mistakes this module knows.
pub fn rewrite(message: &str, text: &str, span: &Range<usize>) -> Option<String> {
    let at = text.get(span.clone()).unwrap_or("");
    if let Some(rest) = message.strip_prefix("unknown field `") {
        return unknown_field(rest);
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if rest.starts_with("map, expected a sequence") && !at.starts_with("[[") && at.starts_with('[') {
            let name = at.trim_start_matches('[').split(']').next()?.trim();
            LISTS.contains(&name).then_some(())?;
            return Some(format!(
                "[{name}] declares a single table, but {name} is a list: write [[{name}]] (two brackets), once per entry"
            ));
        }
        if at.starts_with("[[") {
            let name = at.trim_start_matches('[').split(']').next()?.trim();
            if TABLES.contains(&name) {
                return Some(format!(
                    "[[{name}]] declares a list, but {name} is a single table: write [{name}] (one bracket)"
                ));
            }
        }
        if rest.ends_with("expected a string") {
            return number_for_duration(rest, key_before(text, span.start)?);
        }
    }
    None
}

/// `dedline`, expected one of `deadline`, `grace`, … → the nearest name, if one is near.
fn unknown_field(rest: &str) -> Option<String> {
    let (field, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let nearest = nearest(field, &candidates)?;
    Some(format!("unknown field `{field}`; did you mean `{nearest}`?"))
}

/// The candidate closest to `word` by edit distance (transpositions count once), if it is
/// within a third of the word's length (at least 1): `dedline` → `deadline`, never `xyz` → `grace`.
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(&word, c), *c))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

/// `integer `30`, expected a string` for a duration key → write `"30s"`.
fn number_for_duration(rest: &str, key: &str) -> Option<String> {
    if !DURATION_KEYS.contains(&key) {
        return None;
    }
    let number = rest.split('`').nth(1)?;
    let written = match number.parse::<u64>() {
        Ok(secs) => format!("{secs}s"),
        Err(_) => format!("{}ms", (number.parse::<f64>().ok()? * 1000.0).round() as u64),
    };
    Some(format!(
        "{key} is a duration, a string with a unit: write {key} = \"{written}\" (or \"500ms\", \"2m\")"
    ))
}

/// The key whose value starts at `offset`: the word before the `=` in front of it.
fn key_before(text: &str, offset: usize) -> Option<&str> {
    let before = text.get(..offset)?.trim_end().strip_suffix('=')?.trim_end();
    let start =
        before.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).map_or(0, |i| i + 1);
    Some(&before[start..]).filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_finds_typos_and_nothing_far() {
        let keys = ["deadline", "grace", "retry_after", "close_code"];
        assert_eq!(nearest("dedline", &keys), Some("deadline"));
        assert_eq!(nearest("deadlnie", &keys), Some("deadline"));
        assert_eq!(nearest("Grace", &keys), Some("grace"));
        assert_eq!(nearest("retries", &keys), None);
        assert_eq!(nearest("xyz", &keys), None);
    }

    #[test]
    fn key_before_reads_plain_and_inline_tables() {
        let text = "deadline = 30\ntls = { handshake_timeout = 10 }";
        assert_eq!(key_before(text, 11), Some("deadline"));
        assert_eq!(key_before(text, text.find("10").unwrap()), Some("handshake_timeout"));
        assert_eq!(key_before(text, 0), None);
    }
}
