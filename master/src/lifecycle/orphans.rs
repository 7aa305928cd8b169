//! Instance processes a lost launcher left behind: found and ended.

use std::time::Duration;

/// Orphans re-parented to the master (it is a subreaper) must not stay zombies. Only the
/// given pids and re-parented processes outside our process group are killed and waited
/// for, so the runtime's own child handles keep their exit statuses.
pub(super) fn reap_orphans(pids: Vec<u32>) {
    std::thread::spawn(move || {
        let me = std::process::id().to_string();
        let my_group = nix::unistd::getpgrp().as_raw().to_string();
        for _ in 0..50 {
            let mut candidates: Vec<i32> = pids.iter().map(|p| *p as i32).collect();
            if let Ok(dir) = std::fs::read_dir("/proc") {
                for e in dir.flatten() {
                    let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                        continue;
                    };
                    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                        continue;
                    };
                    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                        continue;
                    };
                    let fields: Vec<&str> = rest.split_whitespace().collect();
                    // Our own roles (and a child between fork and exec) share our process
                    // group; instances run in sessions of their own.
                    let own_group = fields.get(2) == Some(&my_group.as_str());
                    if fields.get(1) == Some(&me.as_str()) && !own_group {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        candidates.push(pid);
                    }
                }
            }
            for pid in candidates {
                let _ = nix::sys::wait::waitpid(
                    nix::unistd::Pid::from_raw(pid),
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}
