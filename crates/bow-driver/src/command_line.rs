//! Turning a `command:` string from bow.yaml into argv, with `sh -c` only when the shell is needed.
//!
//! The rule: a command that contains any shell syntax — `| & ; < > ( ) $ `` ` `` * ? [ ] { } ~ #`,
//! a newline, or a leading `NAME=value` assignment — runs as `["/bin/sh", "-c", command]`, so
//! pipes, redirections, globs and `$VAR`/`${VAR}` expansions behave as in a shell. Anything
//! else is split like a shell would split it (whitespace, `'single'` and `"double"` quotes,
//! backslash escapes) and executed directly, so the service is the process bow supervises
//! and receives its signals without a shell in between. The check is deliberately
//! conservative: a quoted `'$'` also selects the shell, which is always correct, only slower.

use crate::error::{DriverError, Result};

/// Characters that make a command need a shell.
const SHELL_CHARACTERS: &[char] = &[
    '|', '&', ';', '<', '>', '(', ')', '$', '`', '*', '?', '[', ']', '{', '}', '~', '#', '\n',
];

/// Splits a command string into argv, or wraps it in `/bin/sh -c` (see the module docs).
pub fn command_to_argv(command: &str) -> Result<Vec<String>> {
    if command.trim().is_empty() {
        return Err(DriverError::InvalidSpec("command is empty".into()));
    }
    if needs_shell(command) {
        return Ok(vec!["/bin/sh".into(), "-c".into(), command.to_string()]);
    }
    split_words(command)
}

/// True when the command uses syntax only a shell understands.
pub fn needs_shell(command: &str) -> bool {
    if command.contains(SHELL_CHARACTERS) {
        return true;
    }
    // `FOO=bar program` sets a variable for one command: a shell feature.
    let first_word = command.split_whitespace().next().unwrap_or("");
    match first_word.split_once('=') {
        Some((name, _)) => {
            let mut chars = name.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

/// Splits on unquoted whitespace, honouring quotes and backslashes like POSIX sh.
fn split_words(command: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(unterminated(command, "single quote")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(unterminated(command, "double quote")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(unterminated(command, "double quote")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(unterminated(command, "backslash escape")),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn unterminated(command: &str, what: &str) -> DriverError {
    DriverError::InvalidSpec(format!("command {command:?} has an unterminated {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(command: &str) -> Vec<String> {
        command_to_argv(command).unwrap()
    }

    #[test]
    fn plain_commands_are_split_without_a_shell() {
        assert_eq!(
            argv("gunicorn -b 127.0.0.1:8000  hardware:app"),
            ["gunicorn", "-b", "127.0.0.1:8000", "hardware:app"]
        );
        assert_eq!(
            argv("  python3 app.py\t--debug "),
            ["python3", "app.py", "--debug"]
        );
    }

    #[test]
    fn quotes_and_escapes_group_words() {
        assert_eq!(
            argv(r#"echo 'a  b' "c \"d\"" e\ f"#),
            ["echo", "a  b", "c \"d\"", "e f"]
        );
        assert_eq!(argv(r#"printf "" x"#), ["printf", "", "x"]);
        assert_eq!(argv(r#"echo "a\nb""#), ["echo", "a\\nb"]);
    }

    #[test]
    fn shell_syntax_runs_through_sh() {
        for command in [
            "gunicorn -b 127.0.0.1:${PORT} app:app",
            "server --port $PORT",
            "a | b",
            "a && b",
            "a; b",
            "a > out.log",
            "echo $(date)",
            "echo `date`",
            "ls *.py",
            "cd ~",
            "FOO=bar server",
            "server # comment",
        ] {
            assert_eq!(argv(command), ["/bin/sh", "-c", command], "{command}");
        }
    }

    #[test]
    fn equals_signs_in_arguments_do_not_need_a_shell() {
        assert_eq!(
            argv("java -Dport=8080 -jar app.jar"),
            ["java", "-Dport=8080", "-jar", "app.jar"]
        );
        assert!(!needs_shell("./run --x=1"));
    }

    #[test]
    fn broken_commands_are_errors() {
        assert!(command_to_argv("").is_err());
        assert!(command_to_argv("   ").is_err());
        let message = command_to_argv("echo 'oops").unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid instance spec: command \"echo 'oops\" has an unterminated single quote"
        );
        assert!(command_to_argv("echo \"oops").is_err());
        assert!(command_to_argv("echo oops\\").is_err());
    }
}
