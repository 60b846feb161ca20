//! Start failures are reported precisely, and leave nothing behind.

mod support;

use std::os::unix::fs::PermissionsExt;

use bow_driver::DriverError;
use support::{Sandbox, http_get};

fn assert_nothing_left(sandbox: &Sandbox, spec: &bow_driver::InstanceSpec) {
    assert!(!spec.instance_run_dir().join("state.json").exists());
    sandbox.assert_clean();
}

#[test]
fn command_not_found_names_the_command() {
    let sandbox = Sandbox::new();
    let spec = sandbox.spec("web", &["no-such-command-bow", "--flag"]);
    let error = sandbox.start(&spec).unwrap_err();
    assert!(
        matches!(error, DriverError::CommandNotFound { ref command, .. } if command == "no-such-command-bow")
    );
    assert!(
        error
            .to_string()
            .starts_with("command not found: no-such-command-bow"),
        "{error}"
    );
    let spec = sandbox.spec("web", &["./missing.sh"]);
    let error = sandbox.start(&spec).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("command not found: ./missing.sh"),
        "{error}"
    );
    assert_nothing_left(&sandbox, &spec);
}

#[test]
fn missing_working_directory_is_named() {
    let sandbox = Sandbox::new();
    let mut spec = sandbox.spec("web", &["/bin/true"]);
    spec.working_dir = sandbox.dir.path().join("absent");
    let error = sandbox.start(&spec).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "working directory {} does not exist; create it or fix `dir`",
            spec.working_dir.display()
        )
    );
    let file = sandbox.dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    spec.working_dir = file.clone();
    let error = sandbox.start(&spec).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("working directory {} is not a directory", file.display())
    );
    assert_nothing_left(&sandbox, &spec);
}

#[test]
fn non_executable_files_and_bad_interpreters_are_explained() {
    let sandbox = Sandbox::new();
    let script = sandbox.dir.path().join("app.sh");
    std::fs::write(&script, "#!/no/such/interpreter\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let spec = sandbox.spec("web", &["./app.sh"]);
    let error = sandbox.start(&spec).unwrap_err();
    assert!(
        matches!(error, DriverError::PermissionDenied { .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .starts_with("permission denied: ./app.sh cannot be executed by"),
        "{error}"
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let error = sandbox.start(&spec).unwrap_err();
    assert_eq!(
        error.to_string(),
        "could not execute ./app.sh: its interpreter (the #! line) or dynamic loader does not exist"
    );
    assert_nothing_left(&sandbox, &spec);
}

#[test]
fn an_instance_id_runs_only_once() {
    let sandbox = Sandbox::new();
    let (spec, port) = sandbox.testapp_spec("web", &[]);
    let handle = sandbox.start(&spec).unwrap();
    assert_eq!(http_get(port, "/healthz").0, 200);
    let error = sandbox.start(&spec).unwrap_err();
    assert!(
        matches!(error, DriverError::AlreadyRunning { pid, .. } if pid == handle.pid),
        "{error}"
    );
    assert!(bow_driver::is_alive(&handle));
    bow_driver::stop(&handle, std::time::Duration::from_secs(5)).unwrap();
    sandbox.assert_clean();
}

#[test]
fn a_shim_program_that_is_not_a_shim_is_reported() {
    let sandbox = Sandbox::new();
    let spec = sandbox.spec("web", &["/bin/true"]);
    let not_a_shim = bow_driver::ShimCommand {
        program: "/bin/echo".into(),
        args: vec!["hello".into()],
    };
    let error = bow_driver::start(&spec, &not_a_shim).unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("shim for web.0 failed: its answer \"hello web.0\" was not understood"),
        "{message}"
    );
    assert_nothing_left(&sandbox, &spec);
}
