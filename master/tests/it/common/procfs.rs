//! Readers for `/proc`: who a process runs as, which capabilities it holds, and which
//! processes descend from the server.

use std::fs;

/// The fields of `/proc/<pid>/status` the privilege tests look at.
#[derive(Debug, Clone)]
pub struct ProcStatus {
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: u32,
    /// One letter: R, S, D, Z, ...
    pub state: char,
}

impl ProcStatus {
    pub fn uid(&self) -> u32 {
        self.uids[1]
    }
}

fn ids4(v: &str) -> [u32; 4] {
    let mut out = [u32::MAX; 4];
    for (i, x) in v.split_whitespace().take(4).enumerate() {
        out[i] = x.parse().unwrap_or(u32::MAX);
    }
    out
}

/// `/proc/<pid>/status`, or None when the process is gone.
pub fn status(pid: i32) -> Option<ProcStatus> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut st = ProcStatus {
        uids: [u32::MAX; 4],
        gids: [u32::MAX; 4],
        groups: Vec::new(),
        cap_inh: u64::MAX,
        cap_prm: u64::MAX,
        cap_eff: u64::MAX,
        cap_bnd: u64::MAX,
        cap_amb: u64::MAX,
        no_new_privs: u32::MAX,
        state: '?',
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let hex = || u64::from_str_radix(v, 16).unwrap_or(u64::MAX);
        match k {
            "Uid" => st.uids = ids4(v),
            "Gid" => st.gids = ids4(v),
            "Groups" => {
                st.groups = v
                    .split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect()
            }
            "CapInh" => st.cap_inh = hex(),
            "CapPrm" => st.cap_prm = hex(),
            "CapEff" => st.cap_eff = hex(),
            "CapBnd" => st.cap_bnd = hex(),
            "CapAmb" => st.cap_amb = hex(),
            "NoNewPrivs" => st.no_new_privs = v.parse().unwrap_or(u32::MAX),
            "State" => st.state = v.chars().next().unwrap_or('?'),
            _ => {}
        }
    }
    Some(st)
}

/// (ppid, state, pgid) from `/proc/<pid>/stat`. The command name may contain spaces and
/// parentheses, so fields are counted after the last `)`.
pub fn stat(pid: i32) -> Option<(i32, char, i32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgid = f.next()?.parse().ok()?;
    Some((ppid, state, pgid))
}

/// The argv of a process, or empty when it is gone (or a zombie).
pub fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn all_pids() -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Direct children of `pid` (zombies included).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out: Vec<i32> = all_pids()
        .into_iter()
        .filter(|p| stat(*p).map(|(pp, _, _)| pp) == Some(pid))
        .collect();
    out.sort_unstable();
    out
}

/// Every process below `pid`, breadth first.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        for c in children(p) {
            if !out.contains(&c) {
                out.push(c);
                queue.push(c);
            }
        }
    }
    out
}

/// A process that exists and is not a zombie. Zombies count as gone: they hold no
/// resources, and the container's init may be slow to reap orphans.
pub fn alive(pid: i32) -> bool {
    matches!(stat(pid), Some((_, s, _)) if s != 'Z')
}

/// Processes whose working directory or argv mentions `path`: everything a test server
/// started, even what left its process group (app instances).
pub fn processes_touching(path: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|p| *p != me)
        .filter(|p| {
            let cwd = fs::read_link(format!("/proc/{p}/cwd"))
                .map(|c| c.to_string_lossy().starts_with(path))
                .unwrap_or(false);
            cwd || cmdline(*p).iter().any(|a| a.contains(path))
        })
        .collect()
}

/// Capability bits of `capability(7)` used by the tests.
pub const CAP_KILL: u64 = 1 << 5;
pub const CAP_SETGID: u64 = 1 << 6;
pub const CAP_SETUID: u64 = 1 << 7;
pub const LAUNCHER_CAPS: u64 = CAP_KILL | CAP_SETGID | CAP_SETUID;
