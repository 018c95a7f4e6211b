//! The tail of one captured stream: its last [`CAPTURE_LIMIT`] bytes in a buffer of fixed
//! size, their decoding as text (marked where bytes were dropped), and the search for line
//! breaks that the waits and the tail's own bookkeeping share.

use std::borrow::Cow;

use super::CAPTURE_LIMIT;

/// The bounded tail of one stream: its last [`CAPTURE_LIMIT`] bytes, and where the line
/// they begin in started.
#[derive(Default)]
pub(super) struct Tail {
    /// The last bytes of the stream, at most [`CAPTURE_LIMIT`], in a buffer that grows to
    /// that size at most (see [`Tail::reserve`]).
    pub(super) bytes: Vec<u8>,
    /// The stream offset of `bytes[0]`: how many bytes were dropped before it.
    pub(super) start: u64,
    /// The stream offset at which the line that `bytes[0]` belongs to began: `start` when
    /// `bytes` begins with a line, less when that line's beginning was dropped.
    pub(super) line_start: u64,
    /// Whether the stream reached end of file (or capture stopped).
    pub(super) ended: bool,
    /// Whether this stream is captured at all.
    pub(super) captured: bool,
}

impl Tail {
    pub(super) fn captured() -> Tail {
        Tail {
            captured: true,
            ..Tail::default()
        }
    }

    /// Room for `additional` more bytes: the buffer doubles as `Vec` does, but never beyond
    /// [`CAPTURE_LIMIT`] (a quiet stream costs little, a flood no more than the limit).
    fn reserve(&mut self, additional: usize) {
        let needed = self.bytes.len() + additional;
        if needed > self.bytes.capacity() {
            let capacity = CAPTURE_LIMIT.min(needed.max(2 * self.bytes.capacity()));
            self.bytes.reserve_exact(capacity - self.bytes.len());
        }
    }

    /// Appends `chunk`, dropping the oldest bytes beyond [`CAPTURE_LIMIT`]. The only work
    /// that looks at the bytes is the search, among those dropped, for the last line end
    /// (at the speed of `memchr`).
    pub(super) fn push(&mut self, chunk: &[u8]) {
        let excess = (self.bytes.len() + chunk.len()).saturating_sub(CAPTURE_LIMIT);
        self.reserve(
            chunk
                .len()
                .min(CAPTURE_LIMIT)
                .saturating_sub(excess.min(self.bytes.len())),
        );
        if excess == 0 {
            self.bytes.extend_from_slice(chunk);
            return;
        }
        // Dropped: the first `from_bytes` bytes held, then the first `from_chunk` of the
        // chunk (when the chunk alone fills the tail).
        let from_bytes = excess.min(self.bytes.len());
        let from_chunk = excess - from_bytes;
        if from_bytes > 0 {
            let next = self.bytes.get(from_bytes).or(chunk.first()).copied();
            if let Some(end) = last_line_end(&self.bytes[..from_bytes], next) {
                self.line_start = self.start + offset(end);
            }
        }
        if from_chunk > 0 {
            if let Some(end) = last_line_end(&chunk[..from_chunk], chunk.get(from_chunk).copied()) {
                self.line_start = self.start + offset(from_bytes + end);
            }
            self.bytes.clear();
            self.bytes.extend_from_slice(&chunk[from_chunk..]);
        } else {
            self.bytes.drain(..from_bytes);
            self.bytes.extend_from_slice(chunk);
        }
        self.start += offset(excess);
    }

    /// How many bytes of the line `bytes` begins in were dropped (0: it begins a line).
    pub(super) fn cut(&self) -> u64 {
        self.start - self.line_start
    }

    /// The tail as text (see [`decode`]), marked if bytes were dropped before it.
    pub(super) fn text(&self) -> String {
        decode(self.start, &self.bytes).0.into_owned()
    }

    /// How many bytes of the stream [`Tail::text`] does not show.
    pub(super) fn dropped(&self) -> u64 {
        decode(self.start, &self.bytes).1
    }
}

/// A byte count as a stream offset.
pub(super) fn offset(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The marker of text that lost its first `cut` bytes.
fn marker(cut: u64) -> String {
    format!("[… {cut} bytes cut]")
}

/// `bytes`, what is left of text whose first `cut` bytes were dropped, as text of at most
/// [`CAPTURE_LIMIT`] bytes: lossily decoded as UTF-8, and with the marker in front when bytes
/// are missing; and how many are (`cut`, and those left out here). Bytes are left out from
/// the front to make room for the marker, or for the `�` that invalid bytes decode to (three
/// bytes each), and so are the pieces of a character cut in two (so that the text does not
/// begin with `�`). Text that is whole, valid and short enough is borrowed as it is.
pub(super) fn decode(cut: u64, bytes: &[u8]) -> (Cow<'_, str>, u64) {
    let mut skip = 0;
    loop {
        if cut + offset(skip) > 0 {
            while bytes.get(skip).is_some_and(|b| b & 0xC0 == 0x80) {
                skip += 1;
            }
        }
        let missing = cut + offset(skip);
        let body = String::from_utf8_lossy(&bytes[skip..]);
        let marker = if missing > 0 {
            marker(missing)
        } else {
            String::new()
        };
        let excess = (marker.len() + body.len()).saturating_sub(CAPTURE_LIMIT);
        if excess == 0 {
            if missing == 0 {
                return (body, 0);
            }
            let mut text = marker;
            text.push_str(&body);
            return (Cow::Owned(text), missing);
        }
        skip = (skip + excess).min(bytes.len());
    }
}

/// Lines are searched for in blocks of this many bytes: each block is first asked whether
/// it holds a line break with `<[u8]>::contains` (std's `memchr`, fast also in a debug
/// build of this crate), and only a block that does is looked at byte by byte.
const SEARCH_BLOCK: usize = 256;

fn has_line_break(bytes: &[u8]) -> bool {
    bytes.contains(&b'\n') || bytes.contains(&b'\r')
}

fn is_line_break(byte: &u8) -> bool {
    matches!(byte, b'\n' | b'\r')
}

/// The index of the first `\n` or `\r` in `bytes`.
pub(super) fn find_line_break(bytes: &[u8]) -> Option<usize> {
    let mut start = 0;
    while start < bytes.len() {
        let end = bytes.len().min(start + SEARCH_BLOCK);
        let block = &bytes[start..end];
        if has_line_break(block) {
            return block.iter().position(is_line_break).map(|at| start + at);
        }
        start = end;
    }
    None
}

/// The index of the last `\n` or `\r` in `bytes`.
fn rfind_line_break(bytes: &[u8]) -> Option<usize> {
    if !has_line_break(bytes) {
        return None;
    }
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(SEARCH_BLOCK);
        let block = &bytes[start..end];
        if has_line_break(block) {
            return block.iter().rposition(is_line_break).map(|at| start + at);
        }
        end = start;
    }
    None
}

/// Where the last line that ends within `bytes` ends (the index after its line end), given
/// the byte that follows them (`None`: nothing yet). A `\r` followed by `\n` is not a line
/// end of its own: the line ends after the `\n`.
fn last_line_end(bytes: &[u8], next: Option<u8>) -> Option<usize> {
    let mut end = bytes.len();
    loop {
        let at = rfind_line_break(&bytes[..end])?;
        let following = bytes.get(at + 1).copied().or(next);
        if bytes[at] == b'\r' && following == Some(b'\n') {
            end = at;
            continue;
        }
        return Some(at + 1);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The number a marked text says was cut, and the rest of it.
    pub(in crate::capture) fn split_marker(text: &str) -> (u64, &str) {
        let rest = text.strip_prefix("[… ").expect("marked");
        let (cut, kept) = rest.split_once(" bytes cut]").expect("the marker's end");
        (cut.parse().expect("a number"), kept)
    }

    #[test]
    fn a_tail_keeps_the_last_bytes_and_marks_the_cut() {
        let mut tail = Tail::captured();
        tail.push(b"one\ntw");
        tail.push(b"o\nthree");
        assert_eq!(tail.text(), "one\ntwo\nthree");
        assert_eq!((tail.start, tail.dropped()), (0, 0));
        tail.push(&vec![b'x'; CAPTURE_LIMIT]);
        assert_eq!(tail.bytes.len(), CAPTURE_LIMIT);
        assert_eq!(tail.bytes.capacity(), CAPTURE_LIMIT, "never grows");
        // "one\ntwo\n" dropped, and "three": the line now begins 5 bytes before the tail.
        assert_eq!(tail.start, 13);
        assert_eq!(tail.cut(), 5);
        let text = tail.text();
        assert_eq!(
            text.len(),
            CAPTURE_LIMIT,
            "the marker takes room from the bytes shown"
        );
        let (cut, kept) = split_marker(&text);
        assert_eq!(cut, tail.dropped());
        assert_eq!(cut + offset(kept.len()), 13 + offset(CAPTURE_LIMIT));
        assert!(kept.bytes().all(|b| b == b'x'));
        tail.push(b"\nlast\n");
        assert_eq!(tail.cut(), 11);
        let text = tail.text();
        assert!(text.starts_with("[… ") && text.ends_with("x\nlast\n"));
        // A chunk longer than the tail: the line end inside the dropped part counts.
        let mut big = b"a\n".to_vec();
        big.extend(vec![b'y'; CAPTURE_LIMIT + 10]);
        tail.push(&big);
        assert_eq!(tail.cut(), 10);
    }

    #[test]
    fn a_line_ends_at_lf_crlf_or_a_lone_cr() {
        assert_eq!(last_line_end(b"ab\r", Some(b'\n')), None);
        assert_eq!(last_line_end(b"a\nb\r", Some(b'\n')), Some(2));
        assert_eq!(last_line_end(b"a\nb\r", Some(b'c')), Some(4));
        assert_eq!(last_line_end(b"a\r\nb", None), Some(3));
    }
}
