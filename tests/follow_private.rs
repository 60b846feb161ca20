//! Continuous deployment from private repositories: the agent fetches over SSH with a deploy
//! key held as a bow secret (Debian's sshd, git-shell) and over HTTPS with a token held as a
//! bow secret (nginx + git-http-backend behind TLS and basic auth). A wrong credential is a
//! `fetch failed` event and nothing is applied; the right one, set with `bow secret set`
//! while the agent runs, is used by the next fetch. The key and the token are on disk only in
//! the secrets file (encrypted) and, during a fetch, in a tmpfs that is gone afterwards.

mod support;

use std::time::Duration;

use support::git::{GitServer, git, origin_of, push, repo, ssh_key};
use support::secrets::{files_containing, init_and_set, use_key};
use support::stack::{Stack, WAIT, all_healthy};

const LIMIT: Duration = Duration::from_secs(120);

fn follow_with(stack: &Stack, flag: &str, secret: &str) {
    let ran = stack.run(
        &["up", "-d", "--follow", "--interval", "1s", flag, secret],
        LIMIT,
    );
    assert_eq!(ran.code, 0, "{}", ran.describe());
    stack.wait_status("healthy", WAIT, all_healthy);
}

fn wait_follow(stack: &Stack, what: &str, needle: &str) {
    stack.wait_event(what, LIMIT, |e| {
        e.kind == "follow" && e.message.contains(needle)
    });
}

/// Nothing outside the secrets file holds `credential` in plain text: not the state dir, the
/// work tree, the logs or the events; and the fetch's tmpfs is gone.
fn credential_nowhere(stack: &Stack, credential: &str) {
    // Paused, and a cycle under way has ended: no fetch holds the credential now.
    let paused = stack.run(&["follow", "pause"], WAIT);
    assert_eq!(paused.code, 0, "{}", paused.describe());
    std::thread::sleep(Duration::from_secs(3));
    let found: Vec<_> = files_containing(stack.dir.path(), credential.trim().as_bytes())
        .into_iter()
        .filter(|path| !path.starts_with(stack.dir.path().join(".git")))
        .collect();
    assert!(found.is_empty(), "the credential is in {found:?}");
    let events = stack.events();
    assert!(
        !events.iter().any(|e| e.message.contains(credential.trim())),
        "an event shows the credential"
    );
    // As root the fetch's tmpfs is /run/bow/<project>-<env>.git: removed after each fetch.
    let lent: Vec<_> = std::fs::read_dir("/run/bow")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let left: Vec<_> = lent
        .iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(&format!("{}-", stack.project)) && name.ends_with(".git")
        })
        .collect();
    assert!(left.is_empty(), "a lent credential was left in {left:?}");
}

#[test]
fn a_deploy_key_secret_fetches_over_ssh_and_a_wrong_key_applies_nothing() {
    let host = "private-ssh.bow.localhost";
    let (stack, others, _https) = repo("follow-ssh", host);
    let dev = others.path().join("dev");
    let server = GitServer::ssh(&origin_of(&stack));
    git(
        stack.dir.path(),
        &["remote", "set-url", "origin", &server.url],
    );
    use_key(&stack, "me");
    // First a key the server does not know.
    let (stranger, _) = ssh_key(others.path(), "stranger");
    let stranger = std::fs::read_to_string(stranger).unwrap();
    init_and_set(&stack, &[("deploy", stranger.trim())]);
    follow_with(&stack, "--git-key", "deploy");
    let status = stack.run(&["follow", "status"], WAIT);
    assert!(
        status
            .stdout
            .contains("over SSH with the deploy key in secret deploy"),
        "{}",
        status.describe()
    );

    push(&dev, "APP_VERSION: v1", "APP_VERSION: v2", "web v2");
    wait_follow(&stack, "the stranger's key refused", "fetch failed");
    let events = stack.events();
    let failed = events
        .iter()
        .find(|e| e.kind == "follow" && e.message.contains("fetch failed"))
        .unwrap();
    assert!(
        failed.message.contains("Permission denied"),
        "{}",
        failed.message
    );
    assert!(!events.iter().any(|e| e.message.contains("web v2: live")));

    // The deploy key, set while the agent runs: the next fetch uses it.
    let ran = support::secrets::run_with_stdin(
        &stack,
        &["secret", "set", "deploy"],
        server.credential.as_bytes(),
    );
    assert_eq!(ran.code, 0, "{}", ran.describe());
    wait_follow(&stack, "v2 live over SSH", "web v2: live as revision");
    assert_eq!(
        git(stack.dir.path(), &["log", "-1", "--format=%s"]),
        "web v2"
    );
    // The server's host key is remembered in the state dir (first use).
    let known = std::fs::read_to_string(stack.state_dir.join("git-known-hosts"))
        .expect("the host key is remembered");
    assert!(known.contains("ssh-ed25519"), "{known}");
    credential_nowhere(&stack, &server.credential);
    credential_nowhere(&stack, &stranger);
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}

#[test]
fn a_token_secret_fetches_over_https_and_a_wrong_token_applies_nothing() {
    let host = "private-https.bow.localhost";
    let (stack, others, _https) = repo("follow-https", host);
    let dev = others.path().join("dev");
    let server = GitServer::https(&origin_of(&stack));
    let work = stack.dir.path();
    git(work, &["remote", "set-url", "origin", &server.url]);
    // A private CA: trusted the way git is told, the work tree's own config — and
    // GIT_SSL_CAINFO, which overrides it and which this machine's environment sets.
    let ca = server.ca.as_ref().unwrap().to_str().unwrap();
    git(work, &["config", "http.sslCAInfo", ca]);
    stack.set_env("GIT_SSL_CAINFO", ca);
    use_key(&stack, "me");
    init_and_set(&stack, &[("git-token", "not-the-token")]);
    follow_with(&stack, "--git-token", "git-token");

    push(&dev, "APP_VERSION: v1", "APP_VERSION: v2", "web v2");
    wait_follow(&stack, "the wrong token refused", "fetch failed");
    let events = stack.events();
    let failed = events
        .iter()
        .find(|e| e.kind == "follow" && e.message.contains("fetch failed"))
        .unwrap();
    assert!(
        failed.message.contains("Authentication failed"),
        "{}",
        failed.message
    );
    assert!(
        !failed.message.contains("not-the-token"),
        "{}",
        failed.message
    );
    assert!(
        !stack
            .events()
            .iter()
            .any(|e| e.message.contains("web v2: live"))
    );

    // `USER:TOKEN` works as well as the bare token (whose user is x-access-token).
    let value = format!("x-access-token:{}", server.credential);
    let ran =
        support::secrets::run_with_stdin(&stack, &["secret", "set", "git-token"], value.as_bytes());
    assert_eq!(ran.code, 0, "{}", ran.describe());
    wait_follow(&stack, "v2 live over HTTPS", "web v2: live as revision");
    credential_nowhere(&stack, &server.credential);
    // git kept no copy of it.
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let stored = std::fs::read_to_string(format!("{home}/.git-credentials")).unwrap_or_default();
    assert!(!stored.contains(&server.credential), "git stored the token");
    let access = std::fs::read_to_string(server.dir.path().join("access.log")).unwrap();
    assert!(access.contains(" 200 "), "{access}");
    let down = stack.down();
    assert_eq!(down.code, 0, "{}", down.describe());
}
