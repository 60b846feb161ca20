//! Output is rotated at the configured size, keeping the configured number of old files.

mod support;

use bow_driver::LogRotation;
use bow_driver::logs::{LogQuery, log_files, read_instance_log};
use support::{Sandbox, wait_for_exit};

#[test]
fn output_rotates_at_the_size_limit() {
    let sandbox = Sandbox::new();
    let script =
        "i=0; while [ $i -lt 2000 ]; do echo \"line $i of the rotation test\"; i=$((i+1)); done";
    let mut spec = sandbox.spec("chatty", &["/bin/sh", "-c", script]);
    spec.log_rotation = LogRotation {
        max_bytes: 8 * 1024,
        keep: 3,
    };
    let handle = sandbox.start(&spec).unwrap();
    assert_eq!(wait_for_exit(&handle).code, Some(0));

    let files = log_files(&spec.log_dir, &spec.instance_id).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "chatty.0.log.3",
            "chatty.0.log.2",
            "chatty.0.log.1",
            "chatty.0.log"
        ]
    );
    for file in &files {
        let size = std::fs::metadata(file).unwrap().len();
        assert!(
            size > 0 && size <= 8 * 1024,
            "{} has {size} bytes",
            file.display()
        );
    }
    // The kept files hold the newest lines, contiguous and in order.
    let lines = read_instance_log(&spec.log_dir, &spec.instance_id, LogQuery::default()).unwrap();
    let numbers: Vec<u32> = lines
        .iter()
        .map(|line| {
            line.text
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(*numbers.last().unwrap(), 1999);
    assert!(
        numbers.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "lines are not contiguous"
    );
    assert!(
        numbers[0] > 0,
        "the oldest lines should have been rotated away"
    );

    let tail = read_instance_log(
        &spec.log_dir,
        &spec.instance_id,
        LogQuery {
            tail: Some(2),
            since: None,
        },
    )
    .unwrap();
    let texts: Vec<&str> = tail.iter().map(|line| line.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "line 1998 of the rotation test",
            "line 1999 of the rotation test"
        ]
    );
    sandbox.assert_clean();
}
