//! Text that came from outside (UnivaPay's answers, SQLite messages, clap) made fit to
//! store and log: one line, bounded, no control characters.
//!
//! Everything provider-derived that reaches the ledger or the log goes through [`clean`]
//! with one of the caps below, so a hostile answer (a million-character field, ANSI
//! escapes that repaint a terminal, a newline that forges a log line, a NUL) costs at most
//! a few hundred bytes per row and can never look like more than one log line.

/// Error messages and event details derived from an answer (`last_error`, `detail`).
pub(crate) const MAX_ERROR: usize = 500;
/// Single words: UnivaPay's status word, error codes.
pub(crate) const MAX_WORD: usize = 64;
/// A konbini payment number (see [`is_payment_number`]).
pub(crate) const MAX_PAYMENT_NUMBER: usize = 64;
/// A payment slip URL.
pub(crate) const MAX_URL: usize = 2048;

/// Marks text that was cut at its cap.
const CUT: char = '…';

/// Collapses every run of whitespace (newlines included) into one space, so an error that
/// ends up in a log line or systemd's `STATUS=` stays on one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `s` is one word that [`clean`] would leave as it is (no whitespace, no control
/// or invisible format characters), checked without allocating: the status word of every
/// answer goes through this.
pub(crate) fn is_clean_word(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || is_invisible_format(c))
}

/// `s` made safe to store and log: ANSI escape sequences removed, every other control
/// character (NUL, DEL, C1, bidirectional overrides) removed, newlines, tabs and other
/// whitespace runs turned into one space, trimmed, and cut to at most `max_chars`
/// characters (the last of which is `…` when something was cut).
pub(crate) fn clean(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars.saturating_mul(4)));
    let mut chars = 0usize;
    let mut pending_space = false;
    let mut cut = false;
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            skip_escape(&mut it);
            continue;
        }
        if c.is_whitespace() {
            pending_space = chars > 0;
            continue;
        }
        if c.is_control() || is_invisible_format(c) {
            continue;
        }
        let need = usize::from(pending_space) + 1;
        if chars + need > max_chars {
            cut = true;
            break;
        }
        if pending_space {
            out.push(' ');
            chars += 1;
            pending_space = false;
        }
        out.push(c);
        chars += 1;
    }
    if cut && max_chars > 0 {
        // Room for the marker: drop the last character (or a trailing space).
        while chars >= max_chars {
            out.pop();
            chars -= 1;
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push(CUT);
    }
    out
}

/// Skips the rest of an escape sequence after ESC: CSI (`ESC [ ... final`), OSC
/// (`ESC ] ... BEL` or `ESC \`), or a single character after ESC.
fn skip_escape(it: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    match it.next() {
        Some('[') => {
            // Parameters and intermediates, then one final byte in 0x40..=0x7e.
            for c in it.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        }
        Some(']') => {
            while let Some(c) = it.next() {
                if c == '\u{7}' {
                    break;
                }
                if c == '\u{1b}' {
                    if it.peek() == Some(&'\\') {
                        it.next();
                    }
                    break;
                }
            }
        }
        _ => {}
    }
}

/// Format characters that reorder or hide text (bidirectional overrides and isolates,
/// zero-width characters): they make a stored value display as something else.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// A konbini payment number as stored: 1 to [`MAX_PAYMENT_NUMBER`] ASCII letters, digits
/// and hyphens (the chains use digits, some with hyphens or letters).
pub(crate) fn is_payment_number(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PAYMENT_NUMBER
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A payment slip URL as stored: an absolute `https://` URL with a host, at most
/// [`MAX_URL`] bytes, nothing but printable ASCII (no spaces, no control characters).
pub(crate) fn is_https_url(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("https://") else {
        return false;
    };
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    s.len() <= MAX_URL && host_end > 0 && s.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_words_are_what_clean_leaves_alone() {
        for w in ["awaiting", "sim_unknown", "状態", "a-b.c"] {
            assert!(is_clean_word(w), "{w}");
            assert_eq!(clean(w, 64), w);
        }
        for w in ["a b", "a\nb", "a\u{1b}[31mb", "a\u{202e}b", "a\0b", "tab\t"] {
            assert!(!is_clean_word(w), "{w:?}");
        }
    }
    use proptest::prelude::*;

    #[test]
    fn strips_escapes_controls_and_newlines() {
        assert_eq!(clean("\u{1b}[31mred\u{1b}[0m text", 100), "red text");
        assert_eq!(clean("a\nb\r\n\tc", 100), "a b c");
        assert_eq!(clean("nul\0byte\u{7f}del\u{85}", 100), "nulbytedel");
        assert_eq!(clean("\u{1b}]0;title\u{7}x", 100), "x");
        assert_eq!(clean("\u{1b}]8;;http://x\u{1b}\\link", 100), "link");
        assert_eq!(clean("abc\u{202e}fed", 100), "abcfed");
        assert_eq!(clean("  padded  ", 100), "padded");
        assert_eq!(clean("日本語 ok", 100), "日本語 ok");
    }

    #[test]
    fn caps_length_with_a_marker() {
        assert_eq!(clean("abcdef", 6), "abcdef");
        assert_eq!(clean("abcdefg", 6), "abcde…");
        assert_eq!(clean("abcd efgh", 6), "abcd…");
        assert_eq!(
            clean(&"x".repeat(1_000_000), MAX_ERROR).chars().count(),
            500
        );
        assert_eq!(clean("abc", 0), "");
    }

    #[test]
    fn payment_numbers_and_urls() {
        assert!(is_payment_number("1234-5678"));
        assert!(is_payment_number("AB12"));
        assert!(!is_payment_number(""));
        assert!(!is_payment_number("12 34"));
        assert!(!is_payment_number("12\n34"));
        assert!(!is_payment_number(&"1".repeat(65)));
        assert!(is_https_url("https://example.test/slip?id=1"));
        assert!(!is_https_url("http://example.test/slip"));
        assert!(!is_https_url("javascript:alert(1)"));
        assert!(!is_https_url("https:///path"));
        assert!(!is_https_url("https://exa mple.test/"));
        assert!(!is_https_url(&format!(
            "https://x.test/{}",
            "a".repeat(MAX_URL)
        )));
    }

    proptest! {
        #[test]
        fn cleaned_text_is_bounded_one_line_and_control_free(s in ".{0,300}", cap in 0usize..80) {
            let c = clean(&s, cap);
            prop_assert!(c.chars().count() <= cap);
            prop_assert!(!c.chars().any(|ch| ch.is_control() || is_invisible_format(ch)));
            prop_assert!(!c.contains("  "));
            prop_assert_eq!(c.trim(), c.as_str());
        }

        #[test]
        fn short_clean_text_is_kept(s in "[a-zA-Z0-9_ .:-]{0,40}") {
            prop_assert_eq!(clean(&s, 64), one_line(&s));
        }
    }
}
