//! The trimming rule for a process's output quoted in an error message ("Startup" and
//! "Install step" in docs/apps.md). The launcher applies it to startup output it captured and
//! the master to install output it reports, so both messages cut at the same place.

/// Longest output in an error message, in characters.
pub const MESSAGE_MAX_CHARS: usize = 400;

/// Trims `text` and cuts it to 400 characters, appending `...` when it was cut.
pub fn summarize(text: &str) -> String {
    let trimmed = text.trim();
    match trimmed.char_indices().nth(MESSAGE_MAX_CHARS) {
        Some((cut, _)) => format!("{}...", &trimmed[..cut]),
        None => trimmed.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarize_trims_and_cuts_at_400_characters() {
        assert_eq!(summarize("  boom\n"), "boom");
        assert_eq!(summarize(""), "");
        let exact = "a".repeat(400);
        assert_eq!(summarize(&exact), exact);
        let long = "é".repeat(401);
        let cut = summarize(&long);
        assert_eq!(cut.chars().count(), 403);
        assert!(cut.ends_with("é..."));
    }
}
