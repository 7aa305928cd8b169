//! Any byte stream fed to the IPC frame decoder must yield messages or an error: never a
//! panic, never an allocation beyond the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tako_ipc::frame::decode_stream;
use tako_ipc::{LauncherToMaster, MasterToLauncher, MasterToWorker, WorkerToMaster};

fuzz_target!(|data: &[u8]| {
    let _ = decode_stream::<WorkerToMaster>(data);
    let _ = decode_stream::<LauncherToMaster>(data);
    let _ = decode_stream::<MasterToWorker>(data);
    let _ = decode_stream::<MasterToLauncher>(data);
});
