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

/// The login for pulling `image`, when `registries:` has its registry (the password from
/// the named bow secret).
pub(crate) fn pull_auth(
    agent: &Agent,
    image: &str,
) -> Result<Option<bow_driver::PullAuth>, String> {
    let server = bow_spec::image_registry(image);
    let auth = agent
        .lock()
        .spec
        .as_ref()
        .and_then(|spec| spec.registries.get(server).cloned());
    let Some(auth) = auth else {
        return Ok(None);
    };
    let password = crate::secrets::reveal(agent, &auth.password_secret)
        .map_err(|reason| format!("registry {server}: {reason}"))?;
    Ok(Some(bow_driver::PullAuth {
        server: server.to_string(),
        username: auth.username,
        password: String::from_utf8_lossy(&password)
            .trim_end_matches('\n')
            .to_string(),
    }))
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
