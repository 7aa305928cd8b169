//! The pid the app launcher reports for a new instance, checked before the master keeps it
//! (docs/architecture.md, "IPC between the master and its children"): the master later signals that pid, so a compromised
//! launcher naming a worker, the master or another app's process would turn the master's
//! signals against it. The pid must be a child of the launcher running as the app's uid.

use std::fs;
use std::io;

/// What `/proc` says of a reported pid.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The launcher's child, as the app's uid.
    Ours,
    /// No such process: an instance that exited at once and was already reaped. Not kept.
    Gone,
    /// Someone else's process.
    Foreign(&'static str),
}

/// Checks `pid` against the launcher's pid and the uid the app runs as.
pub fn check(pid: u32, launcher: u32, uid: u32) -> Verdict {
    let stat = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Verdict::Gone,
        Err(_) => return Verdict::Foreign("its /proc entry cannot be read"),
    };
    if parent_of(&stat) != Some(launcher) {
        return Verdict::Foreign("it is not the launcher's child");
    }
    let status = match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Verdict::Gone,
        Err(_) => return Verdict::Foreign("its /proc entry cannot be read"),
    };
    match uids_of(&status) {
        Some((real, effective)) if real == uid && effective == uid => Verdict::Ours,
        _ => Verdict::Foreign("it does not run as the app's uid"),
    }
}

/// Field 4 of `/proc/<pid>/stat`. The command name (field 2) may hold spaces and `)`, so
/// the fields are counted from its last `)`.
fn parent_of(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The real and effective uid from `/proc/<pid>/status`.
fn uids_of(status: &str) -> Option<(u32, u32)> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|s| s.parse::<u32>());
    Some((ids.next()?.ok()?, ids.next()?.ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn stat_parent_survives_odd_command_names() {
        assert_eq!(parent_of("42 (a) b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("42 (sleep) S 1234 42"), Some(1234));
        assert_eq!(parent_of("garbage"), None);
        assert_eq!(
            uids_of("Name:\tx\nUid:\t1000\t1001\t1000\t1000\n"),
            Some((1000, 1001))
        );
    }

    #[test]
    fn only_a_child_of_the_launcher_as_the_app_uid_is_ours() {
        let me = std::process::id();
        let uid = nix::unistd::getuid().as_raw();
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        // This test process plays the launcher.
        assert_eq!(check(pid, me, uid), Verdict::Ours);
        assert!(matches!(check(pid, me, uid + 1), Verdict::Foreign(_)));
        // Not a child of the "launcher": our own pid, whose parent is the test runner.
        assert!(matches!(check(me, me, uid), Verdict::Foreign(_)));
        assert!(matches!(check(pid, pid, uid), Verdict::Foreign(_)));
        child.kill().expect("kill sleep");
        child.wait().expect("reap sleep");
        assert_eq!(check(pid, me, uid), Verdict::Gone);
    }
}
