//! An allocator wrapper that watches every single allocation made while a fuzz input runs.
//!
//! A program installs it with `#[global_allocator] static A: cohort::fuzz::GuardAlloc = cohort::fuzz::GuardAlloc;`
//! (the fuzz runner and the fuzz tests do; the `cohort` binary does not). It is armed per thread, only around one
//! input, so other threads and other tests are unaffected. While armed it records the largest request; a request
//! above the bound is recorded as oversized and still served (memory the target only reserves costs nothing), unless
//! it is beyond [`REFUSE_ABOVE`]: then the input is written to standard error, without allocating, and the request is
//! refused, which aborts the process — the one way to report an allocation nobody can serve.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Requests above this are refused (the process aborts after printing the input).
pub const REFUSE_ABOVE: usize = 4 << 30;

/// The system allocator, watched while a fuzz input runs on the current thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardAlloc;

/// Set by the first allocation through [`GuardAlloc`]: allocations are being watched in this process.
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Bound on one allocation while armed; `usize::MAX` when not armed.
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Largest single request while armed.
    static PEAK: Cell<usize> = const { Cell::new(0) };
    /// Largest request above the bound while armed (0: none).
    static OVERSIZE: Cell<usize> = const { Cell::new(0) };
    /// The input being run and its target's name, for the report of a refused request.
    static CURRENT: Cell<(*const u8, usize)> = const { Cell::new((std::ptr::null(), 0)) };
    static TARGET: Cell<&'static str> = const { Cell::new("") };
}

/// Whether this process allocates through [`GuardAlloc`].
pub fn installed() -> bool {
    // An allocation here makes sure the answer is not "not yet".
    drop(std::hint::black_box(Box::new(0u8)));
    INSTALLED.load(Ordering::Relaxed)
}

/// What the guard saw while an input ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watched {
    /// Largest single allocation request, in bytes.
    pub peak: usize,
    /// Largest request above the bound, if any.
    pub oversize: Option<usize>,
}

/// Runs `f` with the guard armed on this thread: allocations above `limit` bytes are recorded.
pub(crate) fn watch<R>(target: &'static str, limit: usize, input: &[u8], f: impl FnOnce() -> R) -> (R, Watched) {
    PEAK.with(|p| p.set(0));
    OVERSIZE.with(|o| o.set(0));
    CURRENT.with(|c| c.set((input.as_ptr(), input.len())));
    TARGET.with(|t| t.set(target));
    LIMIT.with(|l| l.set(limit));
    let result = f();
    LIMIT.with(|l| l.set(usize::MAX));
    CURRENT.with(|c| c.set((std::ptr::null(), 0)));
    let oversize = OVERSIZE.with(Cell::get);
    (result, Watched { peak: PEAK.with(Cell::get), oversize: (oversize > 0).then_some(oversize) })
}

/// Whether a request of `size` bytes may be served.
fn allowed(size: usize) -> bool {
    let limit = LIMIT.try_with(Cell::get).unwrap_or(usize::MAX);
    if limit == usize::MAX {
        return true;
    }
    let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
    if size <= limit {
        return true;
    }
    let _ = OVERSIZE.try_with(|o| o.set(o.get().max(size)));
    if size <= REFUSE_ABOVE {
        return true;
    }
    report_refused(size);
    false
}

/// Writes the refused size and the current input (hex) to standard error with plain `write` calls: no allocation.
fn report_refused(size: usize) {
    let target = TARGET.try_with(Cell::get).unwrap_or("");
    let (ptr, len) = CURRENT.try_with(Cell::get).unwrap_or((std::ptr::null(), 0));
    let mut buf = [0u8; 1024];
    let mut n = 0;
    let put = |bytes: &[u8], buf: &mut [u8; 1024], n: &mut usize| {
        for &b in bytes {
            if *n == buf.len() {
                write_stderr(&buf[..]);
                *n = 0;
            }
            buf[*n] = b;
            *n += 1;
        }
    };
    put(b"\ncohort fuzz: target `", &mut buf, &mut n);
    put(target.as_bytes(), &mut buf, &mut n);
    put(b"` requested one allocation of ", &mut buf, &mut n);
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = size;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&digits[i..], &mut buf, &mut n);
    put(b" bytes; refused (the process aborts). Input (hex):\n", &mut buf, &mut n);
    if !ptr.is_null() {
        // SAFETY: `watch` set (ptr, len) from a slice that outlives the armed call this allocation happens in.
        let input = unsafe { std::slice::from_raw_parts(ptr, len) };
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for &b in input {
            put(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]], &mut buf, &mut n);
        }
    }
    put(b"\n", &mut buf, &mut n);
    write_stderr(&buf[..n]);
}

fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writing a valid buffer to file descriptor 2.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

// SAFETY: every request is passed to the system allocator unchanged or refused with a null pointer; nothing here
// allocates or unwinds.
unsafe impl GlobalAlloc for GuardAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        if !allowed(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        if !allowed(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !allowed(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}
