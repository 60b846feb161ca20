//! SIGTERM handling: a dedicated thread waits for the signal, drains in-flight requests, exits 0.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::http::App;

/// How long a graceful shutdown waits for requests being answered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The signals that end the app gracefully: SIGINT, and SIGTERM unless it is ignored.
fn termination_set(ignore_sigterm: bool) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write into the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        if !ignore_sigterm {
            libc::sigaddset(&mut set, libc::SIGTERM);
        }
        set
    }
}

/// Ignores SIGTERM when asked to, and blocks the termination signals in the calling thread
/// (and so in every thread started later) so that [`spawn_waiter`] can `sigwait` for them.
/// Must run before any other thread is started.
pub fn install(ignore_sigterm: bool) {
    // SAFETY: plain signal disposition and mask changes while the process is single-threaded.
    // An ignored SIGTERM must also stay out of the sigwait set: a thread waiting for a signal
    // receives it even when its disposition is SIG_IGN.
    unsafe {
        if ignore_sigterm {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        }
        let set = termination_set(ignore_sigterm);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Starts the thread that turns SIGTERM/SIGINT into a graceful exit.
pub fn spawn_waiter(app: Arc<App>) {
    let ignore_sigterm = app.config.ignore_sigterm;
    std::thread::spawn(move || {
        let set = termination_set(ignore_sigterm);
        let mut signal: libc::c_int = 0;
        // SAFETY: sigwait reads the set and writes the received signal number.
        while unsafe { libc::sigwait(&set, &mut signal) } != 0 {}
        println!("terminating");
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while app.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = std::io::stdout().flush();
        std::process::exit(0);
    });
}
