//! Finding, reading and loading the stack file, rendering its diagnostics, and the state dir.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bow_spec::{Diagnostic, LoadOptions, Spec};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};

use crate::cli::StackArgs;

/// The default stack file name.
pub const STACK_FILE: &str = "bow.yaml";

/// A stack file read from disk.
pub struct StackFile {
    /// The path as the user will recognise it (as given, or relative to the cwd when found).
    pub path: PathBuf,
    /// Shared by every rendered diagnostic (a large file is not copied per report).
    pub text: std::sync::Arc<str>,
}

/// The file named by `-f`, or `bow.yaml` in the current directory or the nearest parent.
pub fn locate(args: &StackArgs) -> Result<PathBuf> {
    if let Some(file) = &args.file {
        return Ok(file.clone());
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let mut dir: &Path = &cwd;
    loop {
        let candidate = dir.join(STACK_FILE);
        if candidate.is_file() {
            return Ok(candidate
                .strip_prefix(&cwd)
                .map(Path::to_path_buf)
                .unwrap_or(candidate));
        }
        match dir.parent() {
            Some(parent) => dir = parent,
            None => bail!(
                "no {STACK_FILE} in {} or any parent directory; pass one with -f FILE",
                cwd.display()
            ),
        }
    }
}

/// Reads the stack file; a file that is not UTF-8 is reported like any other problem of the
/// file (rendered, at the line and column of its first bad byte).
pub fn read(args: &StackArgs) -> Result<StackFile> {
    let (file, problem) = read_lenient(args)?;
    match problem {
        None => Ok(file),
        Some(diagnostic) => {
            eprint!(
                "{}",
                render_diagnostics(&file, std::slice::from_ref(&diagnostic))
            );
            Err(invalid(&file, 1))
        }
    }
}

/// The stack file, and the diagnostic saying it is not UTF-8 when it is not (its text then
/// holds U+FFFD for each bad byte; positions before the first one are exact).
pub fn read_lenient(args: &StackArgs) -> Result<(StackFile, Option<Diagnostic>)> {
    let path = locate(args)?;
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let problem = bow_spec::text(&bytes).err();
    let text: std::sync::Arc<str> = String::from_utf8_lossy(&bytes).into();
    Ok((StackFile { path, text }, problem))
}

/// The environment from `-e`, `BOW_ENV`, or `development`.
pub fn environment(args: &StackArgs) -> String {
    args.env
        .clone()
        .or_else(|| std::env::var("BOW_ENV").ok().filter(|e| !e.is_empty()))
        .unwrap_or_else(|| bow_spec::DEFAULT_ENVIRONMENT.to_string())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn load_options(args: &StackArgs) -> LoadOptions {
    LoadOptions {
        environment: environment(args),
        privileged: is_root(),
        uid0_users: uid0_users(),
    }
}

/// Users with uid 0 other than `root`, from /etc/passwd (`user:` naming one needs
/// `allow_root` like root; the agent checks the uid again when it starts an instance).
pub fn uid0_users() -> Vec<String> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let uid = fields.nth(1)?;
            (uid == "0" && name != "root").then(|| name.to_string())
        })
        .collect()
}

/// Loads the spec for the selected environment, or prints every diagnostic and fails.
pub fn load(args: &StackArgs) -> Result<(StackFile, Spec)> {
    let file = read(args)?;
    match bow_spec::load(&file.text, &load_options(args)) {
        Ok(spec) => Ok((file, spec)),
        Err(diagnostics) => {
            eprint!("{}", render_diagnostics(&file, &diagnostics));
            Err(invalid(&file, diagnostics.len()))
        }
    }
}

/// The error returned after diagnostics were printed.
pub fn invalid(file: &StackFile, count: usize) -> anyhow::Error {
    let noun = if count == 1 { "problem" } else { "problems" };
    anyhow::anyhow!(
        "{} is not valid: {count} {noun}; nothing was started",
        file.path.display()
    )
}

/// Diagnostics with their source lines, graphical on a terminal, plain otherwise.
pub fn render_diagnostics(file: &StackFile, diagnostics: &[Diagnostic]) -> String {
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let theme = if colour {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme).with_context_lines(1);
    let name = file.path.display().to_string();
    let mut out = String::new();
    for diagnostic in diagnostics {
        if line_length(&file.text, diagnostic.span.start) > MAX_RENDERED_LINE {
            // A minified or hostile file: the source line would be megabytes (and miette
            // cannot draw a caret that far in); the one-line form still has line:col.
            out.push_str(&diagnostic.one_line(&name));
            out.push('\n');
            continue;
        }
        let report = Rendered {
            message: diagnostic
                .one_line(&name)
                .split(" (hint: ")
                .next()
                .unwrap_or_default()
                .to_string(),
            hint: diagnostic.hint.clone(),
            source: NamedSource::new(&name, file.text.clone()),
            span: SourceSpan::new(
                diagnostic.span.start.into(),
                diagnostic.span.end - diagnostic.span.start,
            ),
        };
        if handler.render_report(&mut out, &report).is_err() {
            out.push_str(&diagnostic.one_line(&name));
        }
        out.push('\n');
    }
    out
}

/// Longer source lines are not drawn, only named by line and column.
const MAX_RENDERED_LINE: usize = 4096;

/// The length in bytes of the line holding byte `offset` of `text`.
fn line_length(text: &str, offset: usize) -> usize {
    let bytes = text.as_bytes();
    let offset = offset.min(bytes.len());
    let start = bytes[..offset]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |at| at + 1);
    let end = bytes[offset..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |at| offset + at);
    end - start
}

#[derive(Debug)]
struct Rendered {
    message: String,
    hint: Option<String>,
    source: NamedSource<std::sync::Arc<str>>,
    span: SourceSpan,
}

impl std::fmt::Display for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rendered {}

impl miette::Diagnostic for Rendered {
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some("here".to_string()),
            self.span,
        ))))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.hint
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn std::fmt::Display>)
    }
}

/// The state dir named by `--state-dir` or `BOW_STATE_DIR`, if any.
pub fn explicit_state_dir(args: &StackArgs) -> Option<PathBuf> {
    args.state_dir.clone().or_else(|| {
        std::env::var_os("BOW_STATE_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
    })
}

/// The state dir from `--state-dir`, `BOW_STATE_DIR`, or the documented default.
pub fn state_dir(args: &StackArgs, project: &str, environment: &str) -> Result<PathBuf> {
    if let Some(dir) = explicit_state_dir(args) {
        return Ok(dir);
    }
    let leaf = format!("{project}-{environment}");
    if is_root() {
        return Ok(PathBuf::from("/var/lib/bow").join(leaf));
    }
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME")
                .context("neither XDG_STATE_HOME nor HOME is set; pass --state-dir")?;
            PathBuf::from(home).join(".local/state")
        }
    };
    Ok(base.join("bow").join(leaf))
}
