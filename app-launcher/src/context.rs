//! What every instance and install task shares: the launcher config, the reaper, the log
//! writer, the way back to the master and the timing limits.

use std::sync::Arc;

use tako_ipc::{InstanceEvent, LauncherConfig, LauncherToMaster, Sender};

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

/// The sending side towards the master. Never blocks, and bounded: a master that stops
/// reading fails the channel (the launcher then stops its instances and exits) instead of
/// growing the queue.
#[derive(Clone)]
pub struct Events(pub Sender<LauncherToMaster>);

impl Events {
    pub fn send(&self, msg: LauncherToMaster) {
        // Fails only once the channel failed, which the control loop sees as well.
        let _ = self.0.send(&msg);
    }

    pub fn instance(&self, app: &str, instance_id: u32, event: InstanceEvent) {
        self.send(LauncherToMaster::Instance {
            app: app.to_string(),
            instance_id,
            event,
        });
    }
}
