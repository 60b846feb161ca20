//! Following a live instance's log across many rotations loses and repeats nothing.

mod support;

use std::time::{Duration, Instant};

use bow_driver::LogRotation;
use bow_driver::logs::{LogFollower, merge_by_time, read_instance_log};
use support::{Sandbox, wait_for_exit};

#[test]
fn follower_sees_every_line_across_rotations() {
    let sandbox = Sandbox::new();
    let script = "i=0; while [ $i -lt 3000 ]; do echo \"line $i\"; i=$((i+1)); done";
    let mut spec = sandbox.spec("chatty", &["/bin/sh", "-c", script]);
    spec.log_rotation = LogRotation {
        max_bytes: 4096,
        keep: 100,
    };
    let mut follower = LogFollower::from_start(&spec.log_dir, &spec.instance_id);
    let handle = sandbox.start(&spec).unwrap();
    let mut numbers: Vec<u32> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while numbers.last() != Some(&2999) {
        assert!(
            Instant::now() < deadline,
            "followed only {} lines",
            numbers.len()
        );
        for line in follower.poll().unwrap() {
            numbers.push(line.text.strip_prefix("line ").unwrap().parse().unwrap());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let out_of_order: Vec<(usize, &[u32])> = numbers
        .windows(2)
        .enumerate()
        .filter(|(_, pair)| pair[1] != pair[0] + 1)
        .collect();
    assert!(
        out_of_order.is_empty(),
        "gaps or repeats at {out_of_order:?}"
    );
    assert_eq!(numbers.len(), 3000);
    assert_eq!(wait_for_exit(&handle).code, Some(0));
    assert!(
        spec.log_dir.join("chatty.0.log.30").exists(),
        "expected many rotations"
    );
    sandbox.assert_clean();
}

#[test]
fn logs_of_two_instances_merge_in_time_order() {
    let sandbox = Sandbox::new();
    let script = "for i in 1 2 3; do echo \"$BOW_INSTANCE $i\"; sleep 0.05; done";
    let mut handles = vec![];
    let mut specs = vec![];
    for index in 0..2 {
        let mut spec = sandbox.spec("pair", &["/bin/sh", "-c", script]);
        spec.index = index;
        spec.instance_id = format!("pair.{index}");
        spec.env
            .insert("BOW_INSTANCE".into(), spec.instance_id.clone());
        handles.push(sandbox.start(&spec).unwrap());
        specs.push(spec);
    }
    for handle in &handles {
        assert_eq!(wait_for_exit(handle).code, Some(0));
    }
    let sources = specs
        .iter()
        .map(|spec| {
            let lines =
                read_instance_log(&spec.log_dir, &spec.instance_id, Default::default()).unwrap();
            (spec.instance_id.clone(), lines)
        })
        .collect();
    let merged = merge_by_time(sources);
    assert_eq!(merged.len(), 6);
    assert!(
        merged
            .windows(2)
            .all(|pair| pair[0].1.time <= pair[1].1.time)
    );
    assert!(
        merged
            .iter()
            .all(|(label, line)| line.text.starts_with(label.as_str()))
    );
    sandbox.assert_clean();
}
