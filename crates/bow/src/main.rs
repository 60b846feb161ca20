//! The `bow` binary: parses the command line and runs one command.

mod backup_schedule;
mod cli;
mod cli_chaos;
mod code_version;
mod commands;
mod compose;
mod follow;
mod secret_store;
mod session;
mod stack;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// mimalloc rather than the system allocator: the edge allocates and frees small buffers on
/// every request, and glibc's malloc costs it about a tenth of its CPU (bench/edge_cost.sh).
/// Built without transparent huge pages (`no_thp`): with them every process of this binary,
/// each instance's shim included, held about 6 MiB more resident memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // The per-instance shim is this binary re-executed: dispatch before anything else starts.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // git runs this binary as its askpass program when the follower fetches with a token.
    if let Some(file) = std::env::var_os(follow::ASKPASS_ENV) {
        return follow::askpass_main(&file, args.get(1).map(|a| a.as_os_str()));
    }
    if args.get(1).is_some_and(|a| a == "shim") {
        bow_driver::shim_main(&args[2..]);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::EdgePlane {
            state_dir,
            project,
            environment,
            secrets_file,
            take_over,
        } => commands::edge_plane::run(state_dir, project, environment, secrets_file, take_over),
        Command::Validate { stack, output } => {
            commands::validate::run(&stack.or(&cli.stack), output)
        }
        Command::Config { stack, output } => commands::config::run(&stack.or(&cli.stack), output),
        Command::Plan { stack, output } => commands::plan::run(&stack.or(&cli.stack), output),
        Command::Up {
            stack,
            detach,
            following,
            restore,
        } => commands::up::run(&stack.or(&cli.stack), detach, following, restore.as_deref()),
        Command::Follow { command } => commands::follow::run(command, &cli.stack),
        Command::Promote {
            stack,
            from,
            to,
            from_state_dir,
            export,
            from_file,
            services,
            dry_run,
            yes,
        } => commands::promote::run(
            &stack.or(&cli.stack),
            &commands::promote::Promotion {
                from: from.as_deref(),
                to: to.as_deref(),
                from_state_dir,
                export,
                from_file,
                services: &services,
                yes,
                dry_run,
            },
        ),
        Command::Apply { stack, yes } => commands::apply::run(&stack.or(&cli.stack), yes),
        Command::Security {
            stack,
            service,
            output,
        } => commands::security::run(&stack.or(&cli.stack), &service, output),
        Command::Rollback { stack, service, to } => {
            commands::rollback::run(&stack.or(&cli.stack), &service, to)
        }
        Command::History {
            stack,
            service,
            output,
        } => commands::history::run(&stack.or(&cli.stack), service.as_deref(), output),
        Command::Status { stack, output } => commands::status::run(&stack.or(&cli.stack), output),
        Command::Logs {
            stack,
            service,
            follow,
            since,
            tail,
            timestamps,
        } => {
            let options = commands::logs::LogsArgs {
                service: service.as_deref(),
                follow,
                since: since.as_deref(),
                tail,
                timestamps,
            };
            commands::logs::run(&cli::StackArgs::from(stack).or(&cli.stack), options)
        }
        Command::Events {
            stack,
            output,
            tail,
            since,
            follow,
        } => commands::events::run(
            &stack.or(&cli.stack),
            output,
            tail,
            since.as_deref(),
            follow,
        ),
        Command::Alerts {
            stack,
            output,
            action,
        } => commands::alerts::run(&stack.or(&cli.stack), output, action),
        Command::Top {
            stack,
            interval,
            once,
        } => commands::top::run(&stack.or(&cli.stack), interval.as_std(), once),
        Command::Restart { stack, service } => {
            commands::restart::run(&stack.or(&cli.stack), &service)
        }
        Command::Down { stack } => commands::down::run(&stack.or(&cli.stack)),
        Command::Chaos { drill } => {
            let stack = match &drill {
                cli::ChaosDrill::Kill { stack, .. }
                | cli::ChaosDrill::Pause { stack, .. }
                | cli::ChaosDrill::Agent { stack, .. }
                | cli::ChaosDrill::Latency { stack, .. }
                | cli::ChaosDrill::Loss { stack, .. } => stack.clone().or(&cli.stack),
            };
            commands::chaos::run(&stack, &drill)
        }
        Command::Secret { command } => commands::secret::run(command, &cli.stack),
        Command::Psql {
            stack,
            service,
            args,
        } => commands::psql::run(&stack.or(&cli.stack), &service, &args),
        Command::Trust { stack } => commands::trust::run(&stack.or(&cli.stack)),
        Command::Certs { stack, output } => commands::certs::run(&stack.or(&cli.stack), output),
        Command::Volume { command } => commands::volume::run(command, &cli.stack),
        Command::Db { command } => commands::db::run(command, &cli.stack),
        Command::Backup { command } => commands::backup::run(command, &cli.stack),
        Command::RestoreAll { stack, yes } => {
            commands::backup::restore_all(&stack.or(&cli.stack), yes)
        }
        Command::Metrics { command } => commands::metrics::run(command, &cli.stack),
        Command::Exec {
            stack,
            service,
            instance,
            command,
        } => commands::exec::run(&stack.or(&cli.stack), &service, instance, &command),
        Command::Import {
            compose_file,
            output,
            force,
            project,
        } => commands::import::run(&compose_file, output.as_deref(), force, project.as_deref()),
        Command::Export {
            format,
            stack,
            output,
        } => commands::import::export(format, &stack.or(&cli.stack), output.as_deref()),
        Command::Agent {
            stack,
            print_systemd_unit,
            following,
        } => commands::agent::run(&stack.or(&cli.stack), print_systemd_unit, following),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// The async runtime for commands that run an agent: one worker per CPU the process may run
/// on (its affinity mask and cgroup quota), so a pinned agent does not fight itself for a core.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?)
}
