//! Length-prefixed frames: the unit every cohort connection carries.
//!
//! ```text
//! offset  size  field
//! 0       4     body_len    u32 LE: bytes after this field (header_len field + header + payload)
//! 4       2     header_len  u16 LE
//! 6       H     header      postcard-encoded [`Message`] (or another header type: parameter-server links use their own)
//! 6+H     P     payload     raw bytes (tensors as little-endian, see `codec`)
//! ```
//!
//! The order of fields must match between [`encode_prefix`] and [`read_frame`]. `body_len` is checked against a
//! caller-supplied bound *before* anything is allocated, and the payload buffer then grows only as bytes arrive, so
//! a hostile or corrupt peer cannot make us reserve memory it does not send.

use std::io::{self, Read, Write};

use super::message::Message;
use super::WireError;

/// Largest frame accepted once a connection is established (1 GiB). Datasets travel one chunk per frame.
pub const MAX_FRAME: u32 = 1 << 30;
/// Largest frame accepted before the handshake completes.
pub const MAX_HANDSHAKE_FRAME: u32 = 64 * 1024;
/// Bytes of fixed prefix before the header (`body_len` + `header_len`).
pub const PREFIX_LEN: usize = 6;

/// One decoded frame: the header message and its raw payload.
#[derive(Debug)]
pub struct Frame<H = Message> {
    /// The decoded header.
    pub message: H,
    /// Raw payload bytes (may be empty).
    pub payload: Vec<u8>,
    /// Bytes this frame occupied on the wire, prefix included.
    pub wire_len: usize,
}

/// Encodes the prefix and header of a frame whose payload has `payload_len` bytes.
///
/// The payload itself is written separately so large tensors are never copied into a second buffer.
pub fn encode_prefix<H: serde::Serialize>(message: &H, payload_len: usize) -> Result<Vec<u8>, WireError> {
    let buf = vec![0u8; PREFIX_LEN];
    let buf = postcard::to_extend(message, buf).map_err(|e| WireError::Encode(e.to_string()))?;
    let header_len = buf.len() - PREFIX_LEN;
    let header_len16 = u16::try_from(header_len).map_err(|_| WireError::HeaderTooLarge(header_len))?;
    let body_len = 2 + header_len as u64 + payload_len as u64;
    if body_len > MAX_FRAME as u64 {
        return Err(WireError::FrameTooLarge { len: body_len, max: MAX_FRAME as u64 });
    }
    let mut buf = buf;
    buf[0..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    buf[4..6].copy_from_slice(&header_len16.to_le_bytes());
    Ok(buf)
}

/// Writes one frame and flushes. Returns the number of bytes written.
pub fn write_frame<W: Write, H: serde::Serialize>(w: &mut W, message: &H, payload: &[u8]) -> Result<usize, WireError> {
    let mut prefix = encode_prefix(message, payload.len())?;
    let total = prefix.len() + payload.len();
    // Small frames go out in one write: one syscall, one wake-up on the other side.
    if payload.len() <= 16 * 1024 {
        prefix.extend_from_slice(payload);
        w.write_all(&prefix)?;
    } else {
        w.write_all(&prefix)?;
        w.write_all(payload)?;
    }
    w.flush()?;
    Ok(total)
}

/// Reads one frame.
///
/// Returns `Ok(None)` on a clean close (end of stream before the first byte of a frame); a close in the middle of a
/// frame is [`WireError::Truncated`]. Frames whose `body_len` exceeds `max_len` are rejected before allocation.
pub fn read_frame<R: Read>(r: &mut R, max_len: u32) -> Result<Option<Frame>, WireError> {
    read_frame_of(r, max_len)
}

/// Like [`read_frame`], with a header of another type (the layout is the same).
pub fn read_frame_of<H: serde::de::DeserializeOwned, R: Read>(
    r: &mut R,
    max_len: u32,
) -> Result<Option<Frame<H>>, WireError> {
    let mut len_buf = [0u8; 4];
    if !read_exact_or_eof(r, &mut len_buf)? {
        return Ok(None);
    }
    let body_len = u32::from_le_bytes(len_buf);
    if body_len > max_len {
        return Err(WireError::FrameTooLarge { len: body_len as u64, max: max_len as u64 });
    }
    if body_len < 2 {
        return Err(WireError::Malformed(format!(
            "frame body of {body_len} bytes is shorter than its header length field"
        )));
    }
    let mut header_len = [0u8; 2];
    r.read_exact(&mut header_len).map_err(truncated)?;
    let header_len = u16::from_le_bytes(header_len) as usize;
    if 2 + header_len > body_len as usize {
        return Err(WireError::Malformed(format!("header length {header_len} exceeds frame body of {body_len} bytes")));
    }
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header).map_err(truncated)?;
    let message: H = postcard::from_bytes(&header).map_err(|e| WireError::Malformed(format!("bad header: {e}")))?;
    let payload = read_payload(r, body_len as usize - 2 - header_len)?;
    Ok(Some(Frame { message, payload, wire_len: 4 + body_len as usize }))
}

/// Reads exactly `len` payload bytes into a buffer that grows as they arrive (doubling from 1 MiB), so a peer that
/// announces a large frame and sends little makes us reserve little.
fn read_payload<R: Read>(r: &mut R, len: usize) -> Result<Vec<u8>, WireError> {
    const FIRST_STEP: usize = 1 << 20;
    let mut payload = Vec::new();
    while payload.len() < len {
        let start = payload.len();
        let step = (len - start).min(start.max(FIRST_STEP));
        payload.resize(start + step, 0);
        r.read_exact(&mut payload[start..]).map_err(truncated)?;
    }
    Ok(payload)
}

/// Fills `buf` completely; `Ok(false)` if the stream ended before the first byte.
fn read_exact_or_eof<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<bool, WireError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(WireError::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

fn truncated(e: io::Error) -> WireError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        WireError::Truncated
    } else {
        WireError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_small_and_large_payloads() {
        for size in [0usize, 7, 16 * 1024, 16 * 1024 + 1, 300_000] {
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut buf = Vec::new();
            let n = write_frame(&mut buf, &Message::Heartbeat, &payload).unwrap();
            assert_eq!(n, buf.len());
            let frame = read_frame(&mut buf.as_slice(), MAX_FRAME).unwrap().unwrap();
            assert!(matches!(frame.message, Message::Heartbeat));
            assert_eq!(frame.payload, payload);
            assert_eq!(frame.wire_len, buf.len());
        }
    }

    #[test]
    fn clean_close_is_none_and_mid_frame_close_is_truncated() {
        assert!(read_frame(&mut [].as_slice(), MAX_FRAME).unwrap().is_none());
        let mut buf = Vec::new();
        write_frame(&mut buf, &Message::Shutdown, &[1, 2, 3]).unwrap();
        for cut in 1..buf.len() {
            let err = read_frame(&mut &buf[..cut], MAX_FRAME).unwrap_err();
            assert!(matches!(err, WireError::Truncated), "cut at {cut}: {err}");
        }
    }

    #[test]
    fn oversized_length_is_rejected_before_allocation() {
        let bytes = u32::MAX.to_le_bytes();
        let err = read_frame(&mut bytes.as_slice(), MAX_FRAME).unwrap_err();
        assert!(matches!(err, WireError::FrameTooLarge { .. }));
        let mut buf = Vec::new();
        write_frame(&mut buf, &Message::Heartbeat, &[0u8; 100_000]).unwrap();
        let err = read_frame(&mut buf.as_slice(), MAX_HANDSHAKE_FRAME).unwrap_err();
        assert!(matches!(err, WireError::FrameTooLarge { .. }));
    }

    /// A reader over a few bytes that remembers the largest buffer it was asked to fill.
    struct Largest<'a> {
        bytes: &'a [u8],
        largest: usize,
    }

    impl Read for Largest<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.largest = self.largest.max(buf.len());
            self.bytes.read(buf)
        }
    }

    #[test]
    fn frame_announcing_a_gigabyte_but_sending_little_reserves_little() {
        let mut bytes = encode_prefix(&Message::Heartbeat, (MAX_FRAME - 3) as usize).unwrap();
        bytes.extend_from_slice(&[1; 10]);
        let mut r = Largest { bytes: &bytes, largest: 0 };
        assert!(matches!(read_frame(&mut r, MAX_FRAME), Err(WireError::Truncated)));
        assert!(r.largest <= 1 << 20, "asked to fill {} bytes before they arrived", r.largest);
        // A header length beyond the body is refused before the header is read.
        let mut bytes = 10u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&9u16.to_le_bytes());
        assert!(matches!(read_frame(&mut bytes.as_slice(), MAX_FRAME), Err(WireError::Malformed(_))));
    }

    #[test]
    fn garbage_header_is_malformed_not_a_panic() {
        let mut bytes = vec![];
        bytes.extend_from_slice(&6u32.to_le_bytes());
        bytes.extend_from_slice(&4u16.to_le_bytes());
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(read_frame(&mut bytes.as_slice(), MAX_FRAME), Err(WireError::Malformed(_))));
        let mut bytes = vec![];
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&9u16.to_le_bytes());
        bytes.push(0);
        assert!(matches!(read_frame(&mut bytes.as_slice(), MAX_FRAME), Err(WireError::Malformed(_))));
    }
}
