//! Named volumes: the engine's volumes bow made for a scope, labelled with the scope and the
//! name bow.yaml gives them (`uploads` of `uploads:/srv/uploads` is `bow-<scope>-uploads`).
//! No deploy, `bow down` or removal of a service deletes one; `bow volume rm` does.

use std::collections::HashMap;

use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::{ListVolumesOptionsBuilder, RemoveVolumeOptionsBuilder};

use crate::engine::{Engine, is_not_found, message};
use crate::network::SCOPE_LABEL;

/// The label with the name bow.yaml uses.
pub const VOLUME_LABEL: &str = "dev.bow.volume";

/// One volume of a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The name in bow.yaml.
    pub name: String,
    /// The engine's name.
    pub engine_name: String,
    /// Where the engine keeps its data on the host.
    pub mountpoint: String,
}

/// `bow-<scope>-<name>`.
pub fn engine_name(scope: &str, name: &str) -> String {
    format!("bow-{scope}-{name}")
}

/// Makes the volume (labelled) unless it exists.
pub async fn ensure(
    engine: &Engine,
    scope: &str,
    engine_name: &str,
    name: &str,
) -> Result<(), String> {
    let docker = engine.docker().await?;
    let request = VolumeCreateRequest {
        name: Some(engine_name.to_string()),
        labels: Some(HashMap::from([
            (SCOPE_LABEL.to_string(), scope.to_string()),
            (VOLUME_LABEL.to_string(), name.to_string()),
        ])),
        ..Default::default()
    };
    docker
        .create_volume(request)
        .await
        .map(drop)
        .map_err(|e| format!("cannot create volume {engine_name}: {}", message(&e)))
}

/// The scope's volumes, by name.
pub async fn list(engine: &Engine, scope: &str) -> Result<Vec<VolumeInfo>, String> {
    let docker = engine.docker().await?;
    let filters = HashMap::from([("label".to_string(), vec![format!("{SCOPE_LABEL}={scope}")])]);
    let options = ListVolumesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let listed = docker
        .list_volumes(Some(options))
        .await
        .map_err(|e| format!("cannot list volumes: {}", message(&e)))?;
    let mut volumes: Vec<VolumeInfo> = listed
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| VolumeInfo {
            name: v
                .labels
                .get(VOLUME_LABEL)
                .cloned()
                .unwrap_or_else(|| v.name.clone()),
            engine_name: v.name,
            mountpoint: v.mountpoint,
        })
        .collect();
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(volumes)
}

/// Deletes a volume and its data; refused by the engine while a container uses it.
pub async fn remove(engine: &Engine, engine_name: &str) -> Result<bool, String> {
    let docker = engine.docker().await?;
    match docker
        .remove_volume(
            engine_name,
            Some(RemoveVolumeOptionsBuilder::default().build()),
        )
        .await
    {
        Ok(()) => Ok(true),
        Err(error) if is_not_found(&error) => Ok(false),
        Err(error) => Err(message(&error)),
    }
}
