//! Test support: a stand-in for the `bow` agent that dies while its instances run on.
//!
//! `bow-driver-starter start <spec.json>` starts one instance with the shim
//! `/proc/self/exe shim` (as `bow` does), prints its handle as one JSON line, then sleeps
//! until killed. `bow-driver-starter shim <instance-id>` is the shim, dispatched the way
//! `bow` dispatches its hidden `shim` subcommand.

use std::ffi::OsString;
use std::io::Write;

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args.first().and_then(|command| command.to_str()) {
        Some("shim") => bow_driver::shim_main(&args[1..]),
        Some("start") if args.len() == 2 => start_and_sleep(&args[1]),
        _ => {
            eprintln!("usage: bow-driver-starter start <spec.json> | shim <instance-id>");
            std::process::exit(2);
        }
    }
}

fn start_and_sleep(spec_path: &OsString) -> ! {
    let spec_path = std::path::Path::new(spec_path);
    let spec_text = std::fs::read_to_string(spec_path).unwrap_or_else(|e| {
        eprintln!("reading {}: {e}", spec_path.display());
        std::process::exit(2);
    });
    let spec: bow_driver::InstanceSpec = serde_json::from_str(&spec_text).unwrap_or_else(|e| {
        eprintln!("parsing {}: {e}", spec_path.display());
        std::process::exit(2);
    });
    match bow_driver::start(&spec, &bow_driver::ShimCommand::current_exe()) {
        Ok(handle) => {
            let line = serde_json::to_string(&handle).expect("handles serialize");
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
        }
        Err(error) => {
            eprintln!("start failed: {error}");
            std::process::exit(1);
        }
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
