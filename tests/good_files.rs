//! Every file in tests/fixtures/good/ and examples/*/bow.yaml validates in every environment.

mod support;

#[test]
fn good_fixtures_and_examples_are_valid() {
    let root = support::root();
    let mut files = Vec::new();
    for dir in ["tests/fixtures/good"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let stack = entry.unwrap().path().join("bow.yaml");
        if stack.is_file() {
            files.push(stack);
        }
    }
    assert!(files.len() >= 2);
    for file in files {
        let (code, stdout, stderr) =
            support::run(support::bow().arg("validate").arg("-f").arg(&file));
        assert_eq!(code, 0, "{}: {stdout}{stderr}", file.display());
    }
}
