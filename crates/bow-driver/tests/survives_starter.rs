//! An instance outlives the process that started it (even SIGKILLed); a fresh handle read
//! back from JSON verifies and stops it.

mod support;

use std::time::Duration;

use bow_driver::{InstanceHandle, ProcessState, StopOutcome};
use support::{Sandbox, http_get, run_starter, wait_for_log_line};

#[test]
fn instance_survives_the_sigkill_of_its_starter() {
    let sandbox = Sandbox::new();
    let (spec, port) = sandbox.testapp_spec("web", &[]);
    let spec_path = sandbox.dir.path().join("spec.json");
    let (mut starter, handle) = run_starter(&[], &spec, &spec_path).unwrap();
    sandbox.track(handle.clone());
    // The starter used `/proc/self/exe shim`, as bow does; ps shows the binary's name.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", handle.shim_pid)).unwrap();
    assert_eq!(cmdline, b"bow-driver-starter\0shim\0web.0\0");

    // The agent dies hard.
    starter.kill().unwrap();
    starter.wait().unwrap();

    assert_eq!(bow_driver::verify(&handle).unwrap(), ProcessState::Running);
    assert_eq!(
        bow_driver::verify_shim(&handle).unwrap(),
        ProcessState::Running
    );
    assert_eq!(http_get(port, "/healthz").0, 200);
    // Output is still captured after the starter's death.
    wait_for_log_line(&spec, "GET /healthz 200");

    // A later agent only has the stored JSON.
    let adopted: InstanceHandle =
        serde_json::from_str(&serde_json::to_string(&handle).unwrap()).unwrap();
    assert_eq!(
        InstanceHandle::load(&spec.instance_run_dir())
            .unwrap()
            .as_ref(),
        Some(&adopted)
    );
    assert!(bow_driver::is_alive(&adopted));
    let outcome = bow_driver::stop(&adopted, Duration::from_secs(5)).unwrap();
    assert!(
        matches!(outcome, StopOutcome::Terminated(Some(ref exit)) if exit.code == Some(0)),
        "{outcome:?}"
    );
    sandbox.assert_clean();
}
