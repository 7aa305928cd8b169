//! The `app.log` line format (docs/apps.md, "App logs"): splitting a byte stream into lines of at
//! most 16 KiB and prefixing each with time, build, instance and stream.

use time::macros::format_description;
use time::OffsetDateTime;

use crate::output::Stream;

/// Longest line written; longer ones are split.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Turns chunks read from a pipe into lines. Holds at most [`MAX_LINE_BYTES`] of an
/// unfinished line between calls.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; `emit` gets every finished line (without its newline).
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8])) {
        while let Some(pos) = data.iter().position(|&b| b == b'\n') {
            let (line, rest) = data.split_at(pos);
            data = &rest[1..];
            if self.partial.is_empty() {
                emit_split(line, emit);
            } else {
                self.partial.extend_from_slice(line);
                emit_split(&self.partial, emit);
                self.partial.clear();
            }
        }
        self.partial.extend_from_slice(data);
        // A full chunk is emitted only once more bytes follow it, so a line of exactly
        // 16 KiB followed by its newline stays one line.
        while self.partial.len() > MAX_LINE_BYTES {
            emit(&self.partial[..MAX_LINE_BYTES]);
            self.partial.drain(..MAX_LINE_BYTES);
        }
    }

    /// The stream ended: emits an unfinished last line.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit_split(&self.partial, emit);
            self.partial.clear();
        }
    }
}

fn emit_split(line: &[u8], emit: &mut impl FnMut(&[u8])) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        emit(line);
        return;
    }
    for chunk in line.chunks(MAX_LINE_BYTES) {
        emit(chunk);
    }
}

/// `<RFC 3339 UTC with ms> <version>/<instance id> <out|err> <line>\n`
pub fn format_line(
    at: OffsetDateTime,
    version: &str,
    instance_id: u32,
    stream: Stream,
    line: &[u8],
) -> Vec<u8> {
    let stamp = at
        .to_offset(time::UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .unwrap_or_else(|_| "0000-00-00T00:00:00.000Z".to_string());
    let mut out = Vec::with_capacity(stamp.len() + version.len() + line.len() + 24);
    out.extend_from_slice(stamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(version.as_bytes());
    out.extend_from_slice(format!("/{instance_id} {} ", stream.label()).as_bytes());
    out.extend_from_slice(line);
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut s = LineSplitter::new();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut |l| out.push(l.to_vec()));
        }
        s.finish(&mut |l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn splits_on_newlines_across_chunks() {
        let got = lines(&[b"one\ntw", b"o\r\n\nthr", b"ee"]);
        assert_eq!(
            got,
            vec![
                b"one".to_vec(),
                b"two".to_vec(),
                b"".to_vec(),
                b"three".to_vec()
            ]
        );
    }

    #[test]
    fn long_lines_are_split_at_16_kib() {
        let exact = vec![b'a'; MAX_LINE_BYTES];
        let mut input = exact.clone();
        input.push(b'\n');
        assert_eq!(lines(&[&input]), vec![exact.clone()]);

        let long = vec![b'b'; MAX_LINE_BYTES * 2 + 10];
        let mut input = long.clone();
        input.push(b'\n');
        let got = lines(&[&input[..100], &input[100..]]);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].len(), MAX_LINE_BYTES);
        assert_eq!(got[1].len(), MAX_LINE_BYTES);
        assert_eq!(got[2].len(), 10);
    }

    #[test]
    fn unfinished_line_is_bounded_while_waiting() {
        let mut s = LineSplitter::new();
        let mut n = 0;
        for _ in 0..100 {
            s.push(&[b'x'; 1000], &mut |l| {
                assert_eq!(l.len(), MAX_LINE_BYTES);
                n += 1;
            });
            assert!(s.partial.len() <= MAX_LINE_BYTES);
        }
        assert_eq!(n, 100_000 / MAX_LINE_BYTES);
    }

    #[test]
    fn line_format() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let line = format_line(at, "v42", 7, Stream::Err, b"hello world");
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "2023-11-14T22:13:20.123Z v42/7 err hello world\n"
        );
        let at = OffsetDateTime::from_unix_timestamp(0).unwrap();
        assert_eq!(
            format_line(at, "b", 1, Stream::Out, b""),
            b"1970-01-01T00:00:00.000Z b/1 out \n"
        );
    }
}
