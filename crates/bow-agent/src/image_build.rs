//! The prepare step of a `build:` service: its image is built (or found built) before any of
//! its instances start, like a python service's environment.

use bow_reconcile::EventKind;
use bow_spec::{Service, Workload};

use crate::agent::Agent;

/// The image a container service's instances run: `image:`, or the tag of its build.
pub(crate) fn image_of(project: &str, service: &str, definition: &Service) -> Option<String> {
    let Workload::Container(container) = &definition.workload else {
        return None;
    };
    match &container.build {
        Some(_) => Some(bow_container::build::image_tag(
            project,
            service,
            definition.code.as_deref(),
        )),
        None => container.image.clone(),
    }
}

impl Agent {
    /// Builds the service's image when it has `build:` and the engine lacks this version.
    pub(crate) async fn build_image(&self, name: &str, definition: &Service) -> Result<(), String> {
        let Workload::Container(container) = &definition.workload else {
            return Ok(());
        };
        let Some(build) = &container.build else {
            return Ok(());
        };
        let driver = self
            .drivers
            .container()
            .ok_or_else(|| "this agent has no container driver".to_string())?;
        let tag = bow_container::build::image_tag(&self.project, name, definition.code.as_deref());
        let request = bow_container::build::BuildRequest {
            context: build.context.clone().into(),
            dockerfile: build.dockerfile.clone(),
            args: build.args.clone(),
            target: build.target.clone(),
            tag: tag.clone(),
        };
        self.emit(
            name,
            "",
            EventKind::Building,
            &format!("image {tag} from {}", build.context),
        );
        match bow_container::build::build(driver.engine(), &request).await {
            Ok(bow_container::build::Built::Reused) => {
                self.emit(
                    name,
                    "",
                    EventKind::Built,
                    &format!("image {tag} (built before)"),
                );
            }
            Ok(bow_container::build::Built::Built { .. }) => {
                self.emit(name, "", EventKind::Built, &format!("image {tag}"));
            }
            Err(reason) => {
                self.emit(name, &format!("{name}.1"), EventKind::StartFailed, &reason);
                return Err(reason);
            }
        }
        if let Some(image) = &container.image
            && let Err(reason) = bow_container::build::tag(driver.engine(), &tag, image).await
        {
            self.emit(name, "", EventKind::StartFailed, &reason);
        }
        Ok(())
    }
}
