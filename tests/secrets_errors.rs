//! What bow says when secrets cannot be had: no key (the expected path and `bow secret init`),
//! a key that cannot decrypt (the recipients), a key file others can read (the fix), a secret
//! a service uses but nobody set (the command that sets it), a value asked for on a pipe.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::secrets::{init_and_set, init_recipient, run_with_stdin, use_key};
use support::stack::{Ran, Stack};

const STACK: &str = "
services:
  web:
    command: {testapp}
    secrets: [db_password]
";

const LIMIT: Duration = Duration::from_secs(30);

/// Asserts the exit code and that stderr says each of `texts`.
fn says(ran: &Ran, code: i32, texts: &[&str]) {
    assert_eq!(ran.code, code, "{}", ran.describe());
    for text in texts {
        assert!(
            ran.stderr.contains(text),
            "lacks {text:?}: {}",
            ran.describe()
        );
    }
}

#[test]
fn a_secret_never_set_is_refused_by_plan_and_up_but_not_validate() {
    let stack = Stack::new("snotset", STACK);
    use_key(&stack, "me");
    says(&stack.run(&["validate"], LIMIT), 0, &[]);
    for args in [&["plan"][..], &["up", "-d"]] {
        let expected = [
            "secret `db_password` (used by web)",
            "bow secret set db_password -e development",
            "bow secret init -e development",
        ];
        says(&stack.run(args, LIMIT), 1, &expected);
    }
    assert!(stack.status().is_none(), "nothing was started");
    // With the file but still without the secret: the same refusal, without the init hint.
    init_and_set(&stack, &[]);
    let ran = stack.run(&["plan"], LIMIT);
    says(&ran, 1, &["bow secret set db_password -e development"]);
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
    let expected = format!("no age key: expected it in {}", expected.display());
    for args in [
        &["plan"][..],
        &["up", "-d"],
        &["secret", "get", "db_password", "--reveal"],
    ] {
        let ran = stack.run(args, LIMIT);
        says(&ran, 1, &[&expected, "bow secret init -e development"]);
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
    let (init, mine) = init_recipient(&stack);
    says(&init, 0, &["is not encrypted to your key"]);
    let encrypted_to = format!("it is encrypted to {owner}");
    let fix = format!("bow secret recipients add {mine}");
    for args in [&["plan"][..], &["secret", "get", "db_password", "--reveal"]] {
        let ran = stack.run(args, LIMIT);
        says(&ran, 1, &["cannot decrypt", &encrypted_to, &fix]);
    }
    // The owner adds the teammate: now the teammate's key works.
    use_key(&stack, "owner");
    says(
        &stack.run(&["secret", "recipients", "add", &mine], LIMIT),
        0,
        &[],
    );
    use_key(&stack, "teammate");
    let get = stack.run(&["secret", "get", "db_password", "--reveal"], LIMIT);
    says(&get, 0, &[]);
    assert_eq!(get.stdout, "v");
}

#[test]
fn a_key_file_others_can_read_is_refused_with_the_fix() {
    let stack = Stack::new("sperm", STACK);
    let key = use_key(&stack, "me");
    init_and_set(&stack, &[("db_password", "v")]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let fix = format!("chmod 600 {}", key.display());
    let ran = stack.run(&["plan"], LIMIT);
    says(&ran, 1, &["can be read by other users (mode 0644)", &fix]);
}

#[test]
fn values_never_come_from_arguments_nor_go_to_pipes_unasked() {
    let stack = Stack::new("sargv", STACK);
    use_key(&stack, "me");
    init_and_set(&stack, &[("db_password", "v")]);
    // No argument takes a value.
    let ran = stack.run(&["secret", "set", "db_password", "in-argv"], LIMIT);
    says(&ran, 2, &[]);
    let ran = stack.run(&["secret", "get", "db_password"], LIMIT);
    says(&ran, 1, &["pass --reveal"]);
    assert!(ran.stdout.is_empty());
    let ran = run_with_stdin(&stack, &["secret", "set", "db_password"], b"");
    says(&ran, 1, &["is empty"]);
    let ran = run_with_stdin(&stack, &["secret", "set", "bad/name"], b"x");
    says(&ran, 1, &["is not a secret name"]);
    // A typo in the environment would make a secrets file nobody reads.
    let ran = stack.run(&["secret", "init", "-e", "prodution"], LIMIT);
    says(&ran, 1, &["no environment `prodution`"]);
    assert!(!stack.dir.path().join("secrets/prodution.yaml").exists());
}
