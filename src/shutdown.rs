//! Stopping on SIGINT, SIGTERM or SIGHUP: the one place the commands, the supervisor and the unsandboxed
//! path learn that the user (or the system) asked them to stop. A leaf module, so anything may use it
//! without importing the command bodies.

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Waits for the first of SIGINT, SIGTERM or SIGHUP and names it. Never returns if the handlers cannot
/// be installed (then the default action, ending the process, still applies).
pub async fn signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut int, mut term, mut hup) =
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate()), signal(SignalKind::hangup())) {
            (Ok(a), Ok(b), Ok(c)) => (a, b, c),
            _ => return std::future::pending().await,
        };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

/// On the first signal, calls `then` with its name; abort the returned task to stop watching.
/// `then` runs once, on the runtime, and should only flip a flag, cancel a token or log.
pub fn on_signal(then: impl FnOnce(&'static str) + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move { then(signal().await) })
}

/// Cancels `token` on the first signal, then calls `said` with the signal's name (after cancelling:
/// reporting it may fail if stderr is gone). Abort the returned task to stop watching.
pub fn cancel_on_signal(token: &CancellationToken, said: impl FnOnce(&'static str) + Send + 'static) -> JoinHandle<()> {
    let token = token.clone();
    on_signal(move |s| {
        token.cancel();
        said(s);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    // One test raises a real signal at this process: SIGHUP is caught by the handler installed
    // above (tokio keeps its handler for the process's life), so the test binary survives it.
    #[tokio::test]
    async fn a_signal_cancels_the_token_and_names_itself() {
        let token = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let watcher = cancel_on_signal(&token, move |s| {
            let _ = tx.send(s);
        });
        // Let the watcher install its handlers before the signal is raised.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!token.is_cancelled());
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
        let said = tokio::time::timeout(Duration::from_secs(5), rx).await.expect("the watcher saw the signal").unwrap();
        assert_eq!(said, "SIGHUP");
        assert!(token.is_cancelled());
        watcher.await.unwrap();
    }

    #[tokio::test]
    async fn an_aborted_watcher_cancels_nothing() {
        let token = CancellationToken::new();
        let watcher = cancel_on_signal(&token, |_| {});
        watcher.abort();
        assert!(watcher.await.unwrap_err().is_cancelled());
        assert!(!token.is_cancelled());
    }
}
