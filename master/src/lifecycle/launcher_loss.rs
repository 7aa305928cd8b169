//! When the app launcher is lost: its instances are gone with it, the waiters learn so, and
//! the processes it leaves behind are reaped ([`super::orphans`]).

use std::sync::Arc;
use std::time::Duration;

use super::orphans::reap_orphans;
use crate::apps::error::StartError;
use crate::master::Master;

impl Master {
    /// The launcher died: its instances are orphans. Kill their process groups, forget
    /// them, and bring always-on apps back once a launcher is running again.
    pub fn on_launcher_lost(self: &Arc<Self>) {
        let lost: Vec<(String, u32, Option<u32>)> = {
            let reg = self.apps.lock();
            reg.apps
                .values()
                .flat_map(|a| {
                    a.instances
                        .values()
                        .map(move |i| (a.name.clone(), i.id, i.pid))
                })
                .collect()
        };
        if lost.is_empty() {
            return;
        }
        for (_, _, pid) in &lost {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        {
            let mut reg = self.apps.lock();
            for (app, id, _) in &lost {
                if let Some(a) = reg.apps.get_mut(app) {
                    a.last_error =
                        Some("Instance processes were restarted after a launcher failure".into());
                    if let Some(inst) = a.instances.remove(id) {
                        for w in inst.start_waiters {
                            let _ = w.send(Err(StartError::LauncherLost));
                        }
                        for w in inst.exit_waiters {
                            let _ = w.send(());
                        }
                    }
                }
            }
        }
        self.publish();
        reap_orphans(lost.iter().filter_map(|l| l.2).collect());
        if self.is_shutting_down() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if me.launcher.wait_ready(Duration::from_secs(120)).await {
                let names: Vec<String> = me.apps.lock().apps.keys().cloned().collect();
                for app in names {
                    me.schedule_replacement(&app);
                }
            }
        });
    }
}
