//! Memory and CPU limits through cgroups; OOM kills reported; cgroups removed afterwards.

mod support;

use std::time::Duration;

use bow_driver::cgroup::{CgroupVersion, detect_layout};
use bow_driver::{Resources, StopOutcome};
use support::{Sandbox, http_get, is_root, wait_for, wait_for_exit, wait_for_log_line};

fn read(dir: &std::path::Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn memory_growth_beyond_the_limit_is_oom_killed() {
    assert!(is_root(), "this test needs root: it creates cgroups");
    let sandbox = Sandbox::new();
    let (mut spec, _) = sandbox.testapp_spec("hungry", &[("TESTAPP_GROW_MEMORY", "16M")]);
    spec.resources = Resources {
        memory_bytes: Some(64 << 20),
        cpu_cores: None,
    };
    let handle = sandbox.start(&spec).unwrap();
    let cgroup = handle.cgroup.clone().expect("root instances get a cgroup");
    wait_for_log_line(&spec, "grew memory to");
    let exit = wait_for_exit(&handle);
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert_eq!(exit.to_string(), "oom-killed");
    assert!(cgroup.is_removed(), "cgroup {:?} left behind", cgroup.dirs);
    sandbox.assert_clean();
}

#[test]
fn limits_are_written_to_the_cgroup() {
    assert!(is_root(), "this test needs root: it creates cgroups");
    let layout = detect_layout().expect("a cgroup hierarchy");
    let sandbox = Sandbox::new();
    let (mut spec, port) = sandbox.testapp_spec("limited", &[]);
    spec.resources = Resources {
        memory_bytes: Some(256 << 20),
        cpu_cores: Some(0.5),
    };
    let handle = sandbox.start(&spec).unwrap();
    assert_eq!(http_get(port, "/healthz").0, 200);
    let cgroup = handle.cgroup.clone().unwrap();
    assert!(cgroup.pids().contains(&handle.pid));
    match layout.version {
        CgroupVersion::V1 => {
            assert_eq!(
                cgroup.dirs.len(),
                2,
                "memory and cpu hierarchies: {:?}",
                cgroup.dirs
            );
            assert!(cgroup.dirs[0].ends_with(format!("bow/{}/limited.0", sandbox.project)));
            assert_eq!(
                read(&cgroup.dirs[0], "memory.limit_in_bytes"),
                (256u64 << 20).to_string()
            );
            assert_eq!(read(&cgroup.dirs[1], "cpu.cfs_quota_us"), "50000");
            assert_eq!(read(&cgroup.dirs[1], "cpu.cfs_period_us"), "100000");
            let own = std::fs::read_to_string(format!("/proc/{}/cgroup", handle.pid)).unwrap();
            assert!(
                own.contains(&format!(":memory:/bow/{}/limited.0", sandbox.project)),
                "{own}"
            );
        }
        CgroupVersion::V2 => {
            assert_eq!(
                read(&cgroup.dirs[0], "memory.max"),
                (256u64 << 20).to_string()
            );
            assert_eq!(read(&cgroup.dirs[0], "cpu.max"), "50000 100000");
        }
    }
    let outcome = bow_driver::stop(&handle, Duration::from_secs(5)).unwrap();
    assert!(matches!(outcome, StopOutcome::Terminated(_)), "{outcome:?}");
    assert!(cgroup.is_removed());
    sandbox.assert_clean();
}

#[test]
fn kill_instance_leaves_no_process_even_outside_the_group() {
    assert!(is_root(), "this test needs root: it creates cgroups");
    let sandbox = Sandbox::new();
    // `setsid` puts a child in a new session and process group: only the cgroup still finds it.
    let script = "setsid sleep 300 & sleep 300 & echo forked; wait";
    let spec = sandbox.spec("escaper", &["/bin/sh", "-c", script]);
    let handle = sandbox.start(&spec).unwrap();
    wait_for_log_line(&spec, "forked");
    let mut pids = vec![];
    wait_for(
        "three processes in the cgroup",
        Duration::from_secs(5),
        || {
            pids = bow_driver::instance_pids(&handle);
            pids.len() == 3
        },
    );
    bow_driver::kill_instance(&handle).unwrap();
    for pid in pids {
        wait_for("every process to be gone", Duration::from_secs(5), || {
            bow_driver::procfs::read_stat(pid)
                .unwrap()
                .is_none_or(|stat| !stat.is_alive())
        });
    }
    let exit = wait_for_exit(&handle);
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    sandbox.assert_clean();
}

#[test]
fn a_leftover_escaping_the_group_is_stopped_when_the_main_process_exits() {
    assert!(is_root(), "this test needs root: it creates cgroups");
    let sandbox = Sandbox::new();
    let spec = sandbox.spec(
        "daemonizer",
        &["/bin/sh", "-c", "setsid sleep 300 & echo forked"],
    );
    let handle = sandbox.start(&spec).unwrap();
    assert_eq!(wait_for_exit(&handle).code, Some(0));
    assert!(handle.cgroup.as_ref().unwrap().is_removed());
    sandbox.assert_clean();
}
