//! A Server-Sent Events parser (the `text/event-stream` framing of the WHATWG spec), fed with bytes as they arrive.

/// One dispatched unit of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// An event: its `event:` name (empty when none was given), its `data:`
    /// lines joined by `\n`, and its `id:` if it carried one.
    Event {
        event: String,
        data: String,
        id: Option<String>,
    },
    /// A comment line (`: keep-alive`): proof the connection is alive.
    Comment,
}

/// Accumulates bytes and yields the frames completed by them.
///
/// Lines end with `\n`, `\r\n` or `\r`; a blank line dispatches the event
/// being built. A `\r` at the very end of a chunk is held back until the
/// next byte shows whether a `\n` follows, so a `\r\n` split across two
/// chunks does not count as two line ends.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    line: Vec<u8>,
    pending_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    id: Option<String>,
}

/// Refuses a single line longer than this (a hub never sends one; a
/// stream that does is not an event stream and must not fill memory).
const MAX_LINE: usize = 16 * 1024 * 1024;

/// The stream broke the framing: a line over [`MAX_LINE`] bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct LineTooLong;

impl Parser {
    /// Feeds `bytes`, returning every frame they complete.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Frame>, LineTooLong> {
        let mut frames = Vec::new();
        for &b in bytes {
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => self.end_line(&mut frames),
                b'\r' => {
                    self.end_line(&mut frames);
                    self.pending_cr = true;
                }
                _ => {
                    if self.line.len() >= MAX_LINE {
                        return Err(LineTooLong);
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(frames)
    }

    fn end_line(&mut self, frames: &mut Vec<Frame>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if self.has_data {
                frames.push(Frame::Event {
                    event: std::mem::take(&mut self.event),
                    data: std::mem::take(&mut self.data),
                    id: self.id.take(),
                });
            } else {
                // The spec drops an event without data, but its id still
                // counts; the hub always sends data, so only reset here.
                self.event.clear();
            }
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            frames.push(Frame::Comment);
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let (field, value) = match text.find(':') {
            Some(at) => {
                let value = &text[at + 1..];
                (&text[..at], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (&text[..], ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // An id with a NUL is ignored, as the spec says.
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            // `retry` and unknown fields are ignored: reconnection timing is
            // the client's own backoff.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::{Frame, Parser};

    fn event(event: &str, data: &str, id: Option<&str>) -> Frame {
        Frame::Event {
            event: event.into(),
            data: data.into(),
            id: id.map(Into::into),
        }
    }

    #[test]
    fn parses_events_comments_and_multi_line_data() {
        let mut p = Parser::default();
        let frames = p
            .feed(b": keep-alive\n\nevent: snapshot\nid: 7\ndata: {\"a\":1}\n\ndata:x\ndata: y\n\n")
            .unwrap();
        assert_eq!(
            frames,
            vec![
                Frame::Comment,
                event("snapshot", "{\"a\":1}", Some("7")),
                event("", "x\ny", None),
            ]
        );
    }

    #[test]
    fn the_same_frames_whatever_the_chunking_and_line_ends() {
        let text = b"event: service.registered\r\nid: 12\r\ndata: {}\r\n\r\n: ka\r\n\r\nevent: lagged\ndata: {\"resume_from\":12}\n\n";
        let whole = Parser::default().feed(text).unwrap();
        assert_eq!(whole.len(), 3);
        for split in 1..text.len() {
            let mut p = Parser::default();
            let mut frames = p.feed(&text[..split]).unwrap();
            frames.extend(p.feed(&text[split..]).unwrap());
            assert_eq!(frames, whole, "split at {split}");
        }
        let mut p = Parser::default();
        let bytewise: Vec<Frame> = text.iter().flat_map(|b| p.feed(&[*b]).unwrap()).collect();
        assert_eq!(bytewise, whole);
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        let mut p = Parser::default();
        assert!(p.feed(b"event: nothing\n\n").unwrap().is_empty());
        assert_eq!(p.feed(b"data: d\n\n").unwrap(), vec![event("", "d", None)]);
    }
}
