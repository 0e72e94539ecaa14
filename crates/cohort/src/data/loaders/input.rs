//! Opening a data file, raw or gzip-compressed, and reading it while counting bytes.
//!
//! Gzip is recognised by its magic bytes `1f 8b`, never by the file name. Offsets in errors count bytes of the raw
//! file, or of the decompressed stream for a gzip file. Nothing is allocated from a size a header claims until that
//! size has been checked: against the file length for a raw file, and for a gzip file against the most that deflate
//! can expand the compressed bytes to (the buffer then grows only as data actually arrives).

use std::fs::File;
use std::io::{self, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::LoadError;

/// The first two bytes of every gzip member.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Deflate expands data by at most about 1032:1; a gzip file whose header claims more is corrupt.
pub(crate) const MAX_DEFLATE_RATIO: u64 = 1032;
/// Initial capacity of the buffer that gzip payloads are read into; it doubles as data arrives.
pub(crate) const FIRST_STEP: usize = 1 << 20;

/// A data file being read from the start, with the current offset.
pub(crate) struct Input {
    path: PathBuf,
    reader: Box<dyn Read>,
    file_len: u64,
    gzip: bool,
    pos: u64,
}

impl Input {
    /// Opens `path` and looks at its first two bytes to decide whether to decompress.
    pub(crate) fn open(path: &Path) -> Result<Input, LoadError> {
        let io_err = |source| LoadError::Io { path: path.to_path_buf(), source };
        let mut file = File::open(path).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let mut magic = [0u8; 2];
        let n = read_full(&mut file, &mut magic).map_err(io_err)?;
        // Put the peeked bytes back in front of the rest of the file.
        let head = Cursor::new(magic[..n].to_vec()).chain(BufReader::new(file));
        let gzip = magic[..n] == GZIP_MAGIC;
        let reader: Box<dyn Read> = if gzip { Box::new(MultiGzDecoder::new(head)) } else { Box::new(head) };
        Ok(Input { path: path.to_path_buf(), reader, file_len, gzip, pos: 0 })
    }

    /// The file being read.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes consumed so far (of the decompressed stream for gzip).
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Reads exactly `n` header bytes; `n` must be small or already checked by the caller.
    pub(crate) fn header(&mut self, n: usize) -> Result<Vec<u8>, LoadError> {
        let start = self.pos;
        let end = start.saturating_add(n as u64);
        if !self.gzip && end > self.file_len {
            return Err(self.truncated(self.file_len, end));
        }
        let mut buf = vec![0u8; n];
        let got = self.fill(&mut buf)?;
        if got < n {
            return Err(self.truncated(start + got as u64, end));
        }
        Ok(buf)
    }

    /// Reads the payload: exactly `len` bytes, which must be the rest of the data.
    pub(crate) fn payload(&mut self, len: u64) -> Result<Vec<u8>, LoadError> {
        let start = self.pos;
        let Some(end) = start.checked_add(len) else {
            return Err(self.too_large(start, len));
        };
        if !self.gzip {
            if self.file_len < end {
                return Err(self.truncated(self.file_len, end));
            }
            if self.file_len > end {
                return Err(self.trailing(end, self.file_len));
            }
        } else if len > self.file_len.saturating_mul(MAX_DEFLATE_RATIO).saturating_add(1 << 16) {
            return Err(self.too_large(start, len));
        }
        let Ok(size) = usize::try_from(len) else {
            return Err(self.too_large(start, len));
        };
        let buf = if self.gzip {
            // Only bounded, not checked: let the buffer grow as data actually arrives.
            let mut buf = Vec::with_capacity(size.min(FIRST_STEP));
            let result = (&mut self.reader).take(len).read_to_end(&mut buf);
            self.pos += buf.len() as u64;
            match result {
                Ok(_) => {}
                // A gzip stream cut short: reported as truncated below.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(self.read_error(self.pos, e)),
            }
            buf
        } else {
            let mut buf = vec![0u8; size];
            self.fill(&mut buf)?;
            buf
        };
        if buf.len() < size || self.pos < end {
            return Err(self.truncated(self.pos, end));
        }
        if self.gzip {
            let mut probe = [0u8; 1];
            if self.fill(&mut probe)? > 0 {
                // Count the rest without keeping it; a read error here only makes the count a lower bound.
                let extra = io::copy(&mut self.reader, &mut io::sink()).unwrap_or(0);
                return Err(self.trailing(end, end.saturating_add(1).saturating_add(extra)));
            }
        }
        Ok(buf)
    }

    /// Reads everything that is left (for the text formats, which have no header to check).
    pub(crate) fn read_rest(mut self) -> Result<Vec<u8>, LoadError> {
        let mut buf = Vec::new();
        if !self.gzip {
            buf.reserve(usize::try_from(self.file_len.saturating_sub(self.pos)).unwrap_or(0));
        }
        match self.reader.read_to_end(&mut buf) {
            Ok(_) => Ok(buf),
            Err(e) => Err(self.read_error(self.pos + buf.len() as u64, e)),
        }
    }

    /// Reads into `buf` until it is full or the data ends; returns the number of bytes read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, LoadError> {
        let mut n = 0;
        while n < buf.len() {
            match self.reader.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A gzip stream cut short: the caller reports the data as truncated at this offset.
                Err(e) if self.gzip && e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(self.read_error(self.pos + n as u64, e)),
            }
        }
        self.pos += n as u64;
        Ok(n)
    }

    fn read_error(&self, offset: u64, source: io::Error) -> LoadError {
        if self.gzip {
            LoadError::Gzip { path: self.path.clone(), offset, source }
        } else {
            LoadError::Io { path: self.path.clone(), source }
        }
    }

    fn truncated(&self, ends_at: u64, expected: u64) -> LoadError {
        LoadError::Truncated { path: self.path.clone(), ends_at, expected, gzip: self.gzip }
    }

    fn trailing(&self, expected_end: u64, actual_end: u64) -> LoadError {
        LoadError::TrailingData { path: self.path.clone(), expected_end, actual_end, gzip: self.gzip }
    }

    fn too_large(&self, offset: u64, len: u64) -> LoadError {
        LoadError::Header {
            path: self.path.clone(),
            offset,
            message: format!(
                "the header says {len} bytes of data follow, more than a {}{} file can hold; the header is corrupt",
                self.file_len,
                if self.gzip { "-byte gzip" } else { "-byte" }
            ),
        }
    }
}

/// Reads until `buf` is full or the reader ends.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
