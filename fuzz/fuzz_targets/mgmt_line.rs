//! One management-socket connection's bytes: the line reader (with a small cap and reads cut
//! at fuzzer-chosen sizes) must split them exactly like a simple model, and every line it
//! yields goes through `parse_request`, which must answer Ok or an `Invalid command` error,
//! never panic.
//!
//! The protocol and the line reader come from the `tako-protocol` crate the server and ctl use.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

use tako_protocol::line::{LineEvent, LineReader};
use tako_protocol::request as protocol;

/// Hands out the input `step` bytes per read, to move the reader's buffer boundaries.
struct Drip<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Drip<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// What the reader must produce: each `\n`-ended line of at most `cap - 1` bytes, a last
/// line without `\n` of at most `cap` bytes, everything longer as one `TooLong`.
fn model(data: &[u8], cap: usize) -> Vec<LineEvent> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        match rest.iter().position(|b| *b == b'\n') {
            Some(i) => {
                out.push(if i < cap {
                    LineEvent::Line(rest[..i].to_vec())
                } else {
                    LineEvent::TooLong
                });
                rest = &rest[i + 1..];
            }
            None => {
                out.push(if rest.len() <= cap {
                    LineEvent::Line(rest.to_vec())
                } else {
                    LineEvent::TooLong
                });
                rest = &[];
            }
        }
    }
    out.push(LineEvent::Eof);
    out
}

fuzz_target!(|input: &[u8]| {
    let Some((&knobs, data)) = input.split_first() else {
        return;
    };
    let cap = usize::from(knobs & 0x3f) + 1;
    let step = usize::from(knobs >> 6) * 7 + 1;
    let mut reader = LineReader::with_max_len(Drip { data, step }, cap);
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = Vec::new();
    loop {
        let fut = std::pin::pin!(reader.next_line());
        // The source is always ready, so one poll finishes the call.
        let Poll::Ready(ev) = fut.poll(&mut cx) else {
            panic!("an in-memory read cannot be pending");
        };
        let ev = ev.expect("an in-memory read cannot fail");
        let done = ev == LineEvent::Eof;
        if let LineEvent::Line(line) = &ev {
            check_parse(line);
        }
        got.push(ev);
        if done {
            break;
        }
    }
    assert_eq!(got, model(data, cap));
    // The whole input as one line, as the server would see it under the real cap.
    check_parse(data);
});

use std::future::Future;

fn check_parse(line: &[u8]) {
    match protocol::parse_request(line) {
        Ok(req) => {
            // Every accessor of a parsed request is total.
            let _ = (req.name(), req.is_mutating(), req.app(), req.version());
            let _ = req.upgrade_gated_name();
            let _ = format!("{req:?}");
        }
        Err(msg) => assert!(msg.starts_with("Invalid command: "), "{msg}"),
    }
}
