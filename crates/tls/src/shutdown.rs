//! Stopping a server promptly: its graceful shutdown waits for open connections, and a client
//! that never closes one (a stream it keeps open, an attestation that never answers) must not
//! hold the process. Shared by the server and the agent.

use std::future::Future;
use std::time::Duration;

/// How long connections may take to close after the stop before they are dropped.
pub const GRACE: Duration = Duration::from_millis(1200);

/// Runs `serving` (a server whose graceful shutdown follows `stop`) until it ends, or until
/// [`GRACE`] after `stop` turned true, whichever is first; `what` names it in the log line.
pub async fn serve_until_stopped<E>(
    serving: impl Future<Output = Result<(), E>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    what: &str,
) -> Result<(), E> {
    tokio::select! {
        r = serving => r,
        () = async {
            let _ = stop.wait_for(|v| *v).await;
            tokio::time::sleep(GRACE).await;
        } => {
            tracing::warn!(grace = ?GRACE, "{what}: connections still open after the grace period; closing them");
            Ok(())
        }
    }
}
