//! The drivers the agent runs instances with, one per workload kind. The agent reaches an
//! instance only through [`bow_driver::Driver`] and its opaque [`Handle`]; a new kind (a
//! container driver for `image:`) is one more field here and one more arm in `for_service`.

use std::path::Path;
use std::sync::Arc;

use bow_driver::{Driver, Handle, LinuxProcessDriver, ProcessScope, ShimCommand};

/// Which driver runs what.
#[derive(Clone)]
pub struct Drivers {
    process: Arc<dyn Driver>,
}

impl Drivers {
    /// Every workload kind runs on `process` (the kinds that exist today: `command:`).
    pub fn new(process: Arc<dyn Driver>) -> Drivers {
        Drivers { process }
    }

    /// The real drivers of a state dir's project and environment: processes under `shim`.
    pub fn local(shim: ShimCommand, state_dir: &Path, project: &str, environment: &str) -> Drivers {
        Drivers::new(Arc::new(LinuxProcessDriver::new(
            shim,
            ProcessScope {
                run_dir: crate::layout::run_dir(state_dir),
                log_dir: crate::layout::log_dir(state_dir),
                project: project.to_string(),
                environment: environment.to_string(),
            },
        )))
    }

    /// The driver a service's instances start on (`image:` is refused by validation until
    /// the container driver lands).
    pub fn for_service(&self, _definition: &bow_spec::Service) -> &Arc<dyn Driver> {
        &self.process
    }

    /// The driver that started `handle` (by [`Handle::kind`]; one kind today).
    pub fn for_handle(&self, handle: &Handle) -> &Arc<dyn Driver> {
        debug_assert_eq!(handle.kind(), "process");
        &self.process
    }

    /// Every driver, for what is asked of all (adoption, clean-up, an instance id's live
    /// instance).
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Driver>> {
        std::iter::once(&self.process)
    }
}
