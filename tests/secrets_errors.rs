//! What bow says when secrets cannot be had: no key (the expected path and `bow secret init`),
//! a key that cannot decrypt (the recipients), a key file others can read (the fix), a secret
//! a service uses but nobody set (the command that sets it), a value asked for on a pipe.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::secrets::{init_and_set, run_with_stdin, use_key};
use support::stack::Stack;

const STACK: &str = "
services:
  web:
    command: {testapp}
    secrets: [db_password]
";

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn a_secret_never_set_is_refused_by_plan_and_up_but_not_validate() {
    let stack = Stack::new("snotset", STACK);
    use_key(&stack, "me");
    let validate = stack.run(&["validate"], LIMIT);
    assert_eq!(
        validate.code,
        0,
        "validate checks only the file: {}",
        validate.describe()
    );
    for args in [&["plan"][..], &["up", "-d"]] {
        let ran = stack.run(args, LIMIT);
        assert_eq!(ran.code, 1, "{}", ran.describe());
        assert!(
            ran.stderr.contains("secret `db_password` (used by web)"),
            "{}",
            ran.describe()
        );
        assert!(
            ran.stderr
                .contains("bow secret set db_password -e development"),
            "{}",
            ran.describe()
        );
        assert!(
            ran.stderr.contains("bow secret init -e development"),
            "{}",
            ran.describe()
        );
    }
    assert!(stack.status().is_none(), "nothing was started");
    // With the file but still without the secret: the same refusal, without the init hint.
    init_and_set(&stack, &[]);
    let ran = stack.run(&["plan"], LIMIT);
    assert_eq!(ran.code, 1, "{}", ran.describe());
    assert!(
        ran.stderr
            .contains("bow secret set db_password -e development"),
        "{}",
        ran.describe()
    );
    assert!(!ran.stderr.contains("secret init"), "{}", ran.describe());
}

#[test]
fn no_key_names_the_expected_path_and_init() {
    let stack = Stack::new("snokey", STACK);
    use_key(&stack, "me");
    init_and_set(&stack, &[("db_password", "v")]);
    // The default path under HOME, when no variable names a key.
    let home = stack.dir.path().join("home");
    stack.set_env("BOW_AGE_KEY_FILE", "");
    stack.set_env("HOME", home.to_str().unwrap());
    let expected = home
        .join(".config/bow/keys")
        .join(format!("{}-development.key", stack.project));
    for args in [
        &["plan"][..],
        &["up", "-d"],
        &["secret", "get", "db_password", "--reveal"],
    ] {
        let ran = stack.run(args, LIMIT);
        assert_eq!(ran.code, 1, "{}", ran.describe());
        assert!(
            ran.stderr.contains(&format!(
                "no age key: expected it in {}",
                expected.display()
            )),
            "{}",
            ran.describe()
        );
        assert!(
            ran.stderr.contains("bow secret init -e development"),
            "{}",
            ran.describe()
        );
    }
    assert!(stack.status().is_none(), "nothing was started");
}

#[test]
fn a_key_that_cannot_decrypt_lists_the_recipients() {
    let stack = Stack::new("sforeign", STACK);
    use_key(&stack, "owner");
    init_and_set(&stack, &[("db_password", "v")]);
    let owner = stack.run(&["secret", "recipients", "list"], LIMIT).stdout;
    let owner = owner.split_whitespace().next().unwrap().to_string();
    assert!(owner.starts_with("age1"), "{owner}");
    // A teammate makes a key; the file is not encrypted to it yet.
    use_key(&stack, "teammate");
    let init = stack.run(&["secret", "init"], LIMIT);
    assert_eq!(init.code, 0, "{}", init.describe());
    assert!(
        init.stderr.contains("is not encrypted to your key"),
        "{}",
        init.describe()
    );
    let mine = init
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("your public key (recipient): "))
        .unwrap()
        .to_string();
    for args in [&["plan"][..], &["secret", "get", "db_password", "--reveal"]] {
        let ran = stack.run(args, LIMIT);
        assert_eq!(ran.code, 1, "{}", ran.describe());
        assert!(ran.stderr.contains("cannot decrypt"), "{}", ran.describe());
        assert!(
            ran.stderr.contains(&format!("it is encrypted to {owner}")),
            "{}",
            ran.describe()
        );
        assert!(
            ran.stderr
                .contains(&format!("bow secret recipients add {mine}")),
            "{}",
            ran.describe()
        );
    }
    // The owner adds the teammate: now the teammate's key works.
    use_key(&stack, "owner");
    let add = stack.run(&["secret", "recipients", "add", &mine], LIMIT);
    assert_eq!(add.code, 0, "{}", add.describe());
    use_key(&stack, "teammate");
    let get = stack.run(&["secret", "get", "db_password", "--reveal"], LIMIT);
    assert_eq!(
        (get.code, get.stdout.as_str()),
        (0, "v"),
        "{}",
        get.describe()
    );
}

#[test]
fn a_key_file_others_can_read_is_refused_with_the_fix() {
    let stack = Stack::new("sperm", STACK);
    let key = use_key(&stack, "me");
    init_and_set(&stack, &[("db_password", "v")]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ran = stack.run(&["plan"], LIMIT);
    assert_eq!(ran.code, 1, "{}", ran.describe());
    assert!(
        ran.stderr
            .contains("can be read by other users (mode 0644)"),
        "{}",
        ran.describe()
    );
    assert!(
        ran.stderr.contains(&format!("chmod 600 {}", key.display())),
        "{}",
        ran.describe()
    );
}

#[test]
fn values_never_come_from_arguments_nor_go_to_pipes_unasked() {
    let stack = Stack::new("sargv", STACK);
    use_key(&stack, "me");
    init_and_set(&stack, &[("db_password", "v")]);
    let ran = stack.run(&["secret", "set", "db_password", "in-argv"], LIMIT);
    assert_eq!(ran.code, 2, "no argument takes a value: {}", ran.describe());
    let ran = stack.run(&["secret", "get", "db_password"], LIMIT);
    assert_eq!(ran.code, 1, "{}", ran.describe());
    assert!(ran.stderr.contains("pass --reveal"), "{}", ran.describe());
    assert!(ran.stdout.is_empty());
    let ran = run_with_stdin(&stack, &["secret", "set", "db_password"], b"");
    assert_eq!(ran.code, 1, "{}", ran.describe());
    assert!(ran.stderr.contains("is empty"), "{}", ran.describe());
    let ran = run_with_stdin(&stack, &["secret", "set", "bad/name"], b"x");
    assert_eq!(ran.code, 1, "{}", ran.describe());
    assert!(
        ran.stderr.contains("is not a secret name"),
        "{}",
        ran.describe()
    );
}
