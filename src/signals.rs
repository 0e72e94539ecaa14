//! Ctrl-C: the first SIGINT raises the flag the training driver watches — it finishes the step in flight, writes a
//! checkpoint and stops the workers; a second one ends the process at once. Worker processes ignore SIGINT (a
//! terminal sends it to the whole process group), so that the step in flight can finish; they exit when their
//! master goes away.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

extern "C" fn on_sigint(_: libc::c_int) {
    if let Some(flag) = FLAG.get() {
        if !flag.swap(true, Ordering::SeqCst) {
            return;
        }
    }
    // SAFETY: signal() and raise() are async-signal-safe; the default action ends the process.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::raise(libc::SIGINT);
    }
}

/// The interrupt flag, with the SIGINT handler installed on first use.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)));
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // SAFETY: installs a handler that only touches an initialised atomic and async-signal-safe calls.
        unsafe {
            libc::signal(libc::SIGINT, on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
    });
    Arc::clone(flag)
}

/// In a worker process: ignore SIGINT (see the module docs).
pub fn ignore_sigint_in_workers() {
    if std::env::var_os(cohort::worker::ROLE_ENV).is_some_and(|v| v == "worker") {
        // SAFETY: setting a signal's disposition to SIG_IGN has no other effect.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
        }
    }
}
