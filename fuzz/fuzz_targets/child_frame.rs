//! Frames a compromised child could send, checked the way the master checks them
//! (`tako_ipc::validate`): any byte stream must decode to messages or an error, and every
//! decoded message must be accepted or refused without a panic. An accepted report becomes
//! the baseline of the next one, as in the master, and an accepted frame never carries an
//! app the model does not know or a counter above the bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tako_ipc::frame::decode_stream;
use tako_ipc::validate::{
    check_launcher_frame, check_worker_frame, AppBook, InstanceBook, WorkerReports, MAX_COUNTER,
};
use tako_ipc::{LauncherToMaster, WorkerToMaster};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the model's size; the rest is the stream.
    let Some((&n, stream)) = data.split_first() else {
        return;
    };
    let mut book = AppBook::default();
    for i in 0..(n % 4) {
        book.publish(&format!("app{i}"), u32::from(n / 4));
    }
    book.set_epoch(u64::from(n));
    if let Ok(msgs) = decode_stream::<WorkerToMaster>(stream) {
        let mut reports = WorkerReports::default();
        for m in &msgs {
            if check_worker_frame(m, &book, &reports).is_ok() {
                if let WorkerToMaster::HttpStats(stats) = m {
                    for s in stats {
                        assert!(s.app.is_empty() || s.app.starts_with("app"));
                        assert!(s.classes.iter().all(|c| *c <= MAX_COUNTER));
                    }
                }
                reports.record(m);
            }
        }
    }
    let mut known = InstanceBook::default();
    known.live.insert(("app0".into(), u32::from(n)));
    known.installs.insert(u64::from(n));
    if let Ok(msgs) = decode_stream::<LauncherToMaster>(stream) {
        for m in &msgs {
            let _ = check_launcher_frame(m, &known);
        }
    }
});
