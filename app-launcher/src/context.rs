//! What every instance and install task shares: the launcher config, the reaper, the log
//! writer, the way back to the master and the timing limits.

use std::sync::Arc;

use tako_ipc::{InstanceEvent, LauncherConfig, LauncherToMaster};
use tokio::sync::{mpsc, oneshot};

use crate::logs::LogSink;
use crate::reaper::Reaper;
use crate::Limits;

pub struct Ctx {
    pub config: LauncherConfig,
    pub reaper: Arc<Reaper>,
    pub logs: LogSink,
    pub events: Events,
    pub limits: Limits,
}

/// Queued for the task that writes frames to the master.
pub enum Outbound {
    Msg(LauncherToMaster),
    /// Answered once everything queued before it was written (or could not be).
    Flush(oneshot::Sender<()>),
}

/// The sending side towards the master. Never blocks: a slow master costs memory in the
/// queue, not a stalled instance task.
#[derive(Clone)]
pub struct Events(pub mpsc::UnboundedSender<Outbound>);

impl Events {
    pub fn send(&self, msg: LauncherToMaster) {
        // The writer task only ends with the launcher.
        let _ = self.0.send(Outbound::Msg(msg));
    }

    pub fn instance(&self, app: &str, instance_id: u32, event: InstanceEvent) {
        self.send(LauncherToMaster::Instance {
            app: app.to_string(),
            instance_id,
            event,
        });
    }
}
