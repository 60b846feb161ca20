//! Test support: the shim as its own binary (`bow` dispatches its hidden `shim` subcommand instead).

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    bow_driver::shim_main(&args)
}
