//! Supervision of the master's children: proxy workers and the app launcher.

pub mod launcher;
pub mod spawn;
pub mod workers;

use std::os::fd::OwnedFd;

use tako_ipc::FrameError;

/// The per-role allowlist common to every child channel: no descriptors from a child, hello
/// exactly once and first. `Ok(None)` is a clean EOF; `Err` is why the channel is closed.
pub fn next_frame<T>(
    received: Result<Option<(T, Vec<OwnedFd>)>, FrameError>,
    greeted: bool,
    is_hello: fn(&T) -> bool,
    role: &str,
) -> Result<Option<T>, String> {
    let msg = match received {
        Ok(Some((msg, fds))) => {
            if !fds.is_empty() {
                return Err(format!("the {role} may not send file descriptors"));
            }
            msg
        }
        Ok(None) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if greeted == is_hello(&msg) {
        return Err(if greeted {
            "second hello".into()
        } else {
            "first frame was not hello".into()
        });
    }
    Ok(Some(msg))
}
