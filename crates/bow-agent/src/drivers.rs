//! The drivers the agent runs instances with, one per workload kind. The agent reaches an
//! instance only through [`bow_driver::Driver`] and its opaque [`Handle`]: processes through
//! the process driver, `image:`/`build:` services through the container driver.

use std::path::Path;
use std::sync::Arc;

use bow_container::{ContainerDriver, ContainerScope, Engine};
use bow_driver::{Driver, Handle, LinuxProcessDriver, ProcessScope, ShimCommand};

/// Which driver runs what.
#[derive(Clone)]
pub struct Drivers {
    process: Arc<dyn Driver>,
    /// The container driver and its engine (`None`: this agent runs no containers, as in unit
    /// tests on a fake).
    container: Option<Arc<ContainerDriver>>,
}

impl Drivers {
    /// Every workload kind runs on `process` (a fake in unit tests).
    pub fn new(process: Arc<dyn Driver>) -> Drivers {
        Drivers {
            process,
            container: None,
        }
    }

    /// The real drivers of a state dir's project and environment: processes under `shim`,
    /// containers on the engine `DOCKER_HOST` names (or the default socket).
    pub fn local(shim: ShimCommand, state_dir: &Path, project: &str, environment: &str) -> Drivers {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() == 0 };
        Drivers {
            process: Arc::new(LinuxProcessDriver::new(
                shim,
                ProcessScope {
                    run_dir: crate::layout::run_dir(state_dir),
                    log_dir: crate::layout::log_dir(state_dir),
                    project: project.to_string(),
                    environment: environment.to_string(),
                },
            )),
            container: Some(Arc::new(ContainerDriver::new(
                Arc::new(Engine::from_env()),
                ContainerScope {
                    project: project.to_string(),
                    environment: environment.to_string(),
                    run_dir: crate::layout::run_dir(state_dir),
                    log_dir: crate::layout::log_dir(state_dir),
                    root,
                },
            ))),
        }
    }

    /// The driver a service's instances start on.
    pub fn for_service(&self, definition: &bow_spec::Service) -> Result<Arc<dyn Driver>, String> {
        match &definition.workload {
            bow_spec::Workload::Container(_) => self
                .container
                .clone()
                .map(|driver| driver as Arc<dyn Driver>)
                .ok_or_else(|| "this agent has no container driver".to_string()),
            _ => Ok(self.process.clone()),
        }
    }

    /// The driver that started `handle` (by [`Handle::kind`]).
    pub fn for_handle(&self, handle: &Handle) -> Arc<dyn Driver> {
        match (handle.kind(), &self.container) {
            ("container", Some(container)) => container.clone(),
            _ => self.process.clone(),
        }
    }

    /// The container driver, for what only it does (the engine's network).
    pub fn container(&self) -> Option<&Arc<ContainerDriver>> {
        self.container.as_ref()
    }

    /// Every driver, for what is asked of all (adoption, clean-up, an instance id's live
    /// instance).
    pub fn all(&self) -> impl Iterator<Item = Arc<dyn Driver>> + '_ {
        std::iter::once(self.process.clone()).chain(
            self.container
                .iter()
                .map(|driver| driver.clone() as Arc<dyn Driver>),
        )
    }
}
