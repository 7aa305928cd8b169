//! Env values kept out of the output the launcher hands back. A failed install's or a failed
//! startup's output becomes a deploy error, a stored release failure and a line in the
//! server's log (the journal); an app that prints its configuration on failure would put its
//! secrets in all three. The launcher knows the env it gave the process, so it replaces every
//! value in that output before the output leaves the capture.
//!
//! Only literal occurrences are found: a value printed encoded (base64, URL-escaped, split
//! across lines) is not. The files the output is also written to (`install.log`, `app.log`)
//! are the app's own logs and are kept as printed.

/// What an env value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Values shorter than this are left alone: hiding `1` or `on` would mangle every line and
/// protect nothing.
const MIN_SECRET_CHARS: usize = 4;

/// Variables the server itself sets, whose values are no secret (the release version, the
/// port, paths): hiding them would only make errors harder to read.
const PUBLIC_KEYS: [&str; 9] = [
    "PATH",
    "HOME",
    "LANG",
    "NODE_ENV",
    "TAKO_BUILD",
    "TAKO_VERSION",
    "TAKO_INSTANCE",
    "PORT",
    "HOST",
];

/// The values to hide, longest first, so a value that contains another is hidden whole.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    values: Vec<String>,
}

impl Redactor {
    pub fn new(env: &[(String, String)]) -> Self {
        let mut values: Vec<String> = env
            .iter()
            .filter(|(k, _)| !PUBLIC_KEYS.contains(&k.as_str()))
            .filter(|(_, v)| v.chars().count() >= MIN_SECRET_CHARS)
            .map(|(_, v)| v.clone())
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Self { values }
    }

    /// `text` with every occurrence of every value replaced by [`REDACTED`].
    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn values_are_replaced_wherever_they_appear() {
        let r = Redactor::new(&env(&[
            ("DB_URL", "postgres://u:pw@db/x"),
            ("TOKEN", "abcd1234"),
        ]));
        assert_eq!(
            r.apply("connect postgres://u:pw@db/x failed; token=abcd1234 abcd1234"),
            "connect [redacted] failed; token=[redacted] [redacted]"
        );
        assert_eq!(r.apply("nothing here"), "nothing here");
    }

    #[test]
    fn a_value_containing_another_is_hidden_whole() {
        let r = Redactor::new(&env(&[("A", "pass"), ("B", "password-long")]));
        assert_eq!(
            r.apply("x password-long y pass"),
            "x [redacted] y [redacted]"
        );
    }

    #[test]
    fn short_values_and_server_set_variables_stay() {
        let r = Redactor::new(&env(&[
            ("DEBUG", "on"),
            ("PATH", "/usr/bin:/bin"),
            ("TAKO_VERSION", "v1234"),
            ("NODE_ENV", "production"),
            ("EMPTY", ""),
        ]));
        assert_eq!(
            r.apply("on /usr/bin:/bin v1234 production"),
            "on /usr/bin:/bin v1234 production"
        );
    }
}
