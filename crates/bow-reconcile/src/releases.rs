//! Releases: opening one per changed service on apply (numbered after the last, classed by
//! `bow_plan`), their statuses, and `bow rollback` (an earlier release deployed again).

use std::collections::BTreeMap;

use bow_spec::{Service, Spec};

use crate::core::{Core, Refused, no_service};
use crate::deploy::Converge;
use crate::effect::{Effect, EventKind};
use crate::model::{DeployStrategy, Phase, ReleaseRecord, ReleaseStatus, ServiceProgress};

impl Core {
    /// Opens a release for every service whose definition differs from its current (live
    /// or deploying) release, and points each service at its target release.
    pub(crate) fn open_releases(&mut self, spec: &Spec, revision: i64) {
        let mut progress = BTreeMap::new();
        for name in bow_spec::dependency_order(spec) {
            let definition = &spec.services[&name];
            let rows = self.releases.get(&name).cloned().unwrap_or_default();
            let current = rows
                .iter()
                .rev()
                .find(|r| matches!(r.status, ReleaseStatus::Live | ReleaseStatus::Deploying));
            if let Some(current) = current
                && &current.definition == definition
            {
                self.targets.insert(name.clone(), current.number);
                if current.status == ReleaseStatus::Deploying {
                    progress.insert(
                        name.clone(),
                        self.new_progress(&name, current.number, current.strategy),
                    );
                }
                continue;
            }
            // A deploy still under way whose instances already serve counts as the base.
            let serving = |number: i64| self.serves(&name, number);
            let live = rows
                .iter()
                .rev()
                .find(|r| {
                    r.status == ReleaseStatus::Live
                        || (r.status == ReleaseStatus::Deploying && serving(r.number))
                })
                .cloned();
            let number = self.record_release(&name, definition, live.as_ref(), revision, None);
            for interrupted in rows.iter().filter(|r| r.status == ReleaseStatus::Deploying) {
                let status = if self.serves(&name, interrupted.number) {
                    ReleaseStatus::Superseded
                } else {
                    ReleaseStatus::Failed
                };
                self.set_release_status(
                    &name,
                    interrupted.number,
                    status,
                    Some(format!("interrupted by release {number}")),
                );
            }
            let strategy = DeployStrategy::of(definition, live.as_ref().map(|l| &l.definition));
            self.targets.insert(name.clone(), number);
            progress.insert(name.clone(), self.new_progress(&name, number, strategy));
        }
        if !progress.is_empty() {
            for p in progress.values() {
                self.out.effects.push(Effect::Progress(p.clone()));
            }
            self.progress = progress;
            self.progress_revision = revision;
        }
    }

    /// Whether an instance of `release` of `service` is healthy.
    pub(crate) fn serves(&self, service: &str, release: i64) -> bool {
        self.services.get(service).is_some_and(|s| {
            s.slots
                .values()
                .any(|slot| slot.release == release && slot.health == crate::Health::Healthy)
        })
    }

    pub(crate) fn new_progress(
        &self,
        service: &str,
        release: i64,
        strategy: DeployStrategy,
    ) -> ServiceProgress {
        ServiceProgress {
            service: service.to_string(),
            release,
            strategy,
            phase: Phase::Waiting,
            detail: String::new(),
            started_at: self.out.now,
            finished_at: None,
            failure: None,
        }
    }

    /// Records a new release of `name` (numbered after the last); an in-place one is live at
    /// once.
    pub(crate) fn record_release(
        &mut self,
        name: &str,
        definition: &Service,
        live: Option<&ReleaseRecord>,
        revision: i64,
        note: Option<String>,
    ) -> i64 {
        let strategy = DeployStrategy::of(definition, live.map(|l| &l.definition));
        let changes = match live {
            None => "created".to_string(),
            Some(live) => {
                let mut fields: Vec<String> = bow_plan::service_fields(
                    &format!("services.{name}"),
                    &live.definition,
                    definition,
                )
                .into_iter()
                .map(|f| f.path.split('.').skip(2).collect::<Vec<_>>().join("."))
                .collect();
                fields.dedup();
                fields.join(", ")
            }
        };
        let in_place = strategy == DeployStrategy::InPlace;
        let rows = self.releases.entry(name.to_string()).or_default();
        let number = rows.last().map_or(0, |r| r.number) + 1;
        let record = ReleaseRecord {
            service: name.to_string(),
            number,
            revision,
            created_at: self.out.now,
            status: if in_place {
                ReleaseStatus::Live
            } else {
                ReleaseStatus::Deploying
            },
            strategy,
            changes,
            reason: note.unwrap_or_default(),
            definition: definition.clone(),
        };
        rows.push(record.clone());
        self.out
            .effects
            .push(Effect::RecordRelease(Box::new(record)));
        if in_place && let Some(live) = live {
            self.set_release_status(name, live.number, ReleaseStatus::Superseded, None);
        }
        number
    }

    pub(crate) fn set_release_status(
        &mut self,
        service: &str,
        number: i64,
        status: ReleaseStatus,
        reason: Option<String>,
    ) {
        if let Some(row) = self
            .releases
            .get_mut(service)
            .and_then(|rows| rows.iter_mut().find(|r| r.number == number))
        {
            row.status = status;
            if let Some(reason) = &reason {
                row.reason = reason.clone();
            }
        }
        self.out.effects.push(Effect::SetReleaseStatus {
            service: service.to_string(),
            number,
            status,
            reason,
        });
    }

    /// `bow rollback SERVICE [--to N]`: deploys release `to` (or the last good one before the
    /// live release) again, as a new release.
    pub(crate) fn rollback(&mut self, service: &str, to: Option<i64>) -> Result<(), Refused> {
        let spec = self
            .spec
            .clone()
            .ok_or_else(|| Refused("nothing is applied yet".into()))?;
        if !spec.services.contains_key(service) {
            return Err(no_service(&spec, service));
        }
        let releases = self.releases.get(service).cloned().unwrap_or_default();
        let live = releases
            .iter()
            .rev()
            .find(|r| matches!(r.status, ReleaseStatus::Live | ReleaseStatus::Deploying));
        let target = match to {
            Some(number) => releases.iter().find(|r| r.number == number).ok_or_else(|| {
                Refused(format!(
                    "{service} has no release {number}; `bow history {service}` lists them"
                ))
            })?,
            None => releases
                .iter()
                .rev()
                .filter(|r| live.is_none_or(|l| r.number < l.number))
                .find(|r| {
                    r.status == ReleaseStatus::Superseded
                        && live.is_none_or(|l| l.definition != r.definition)
                })
                .ok_or_else(|| {
                    Refused(format!(
                        "{service} has no earlier good release to roll back to; `bow history {service}` lists its releases"
                    ))
                })?,
        };
        if live.is_some_and(|l| l.definition == target.definition) {
            return Err(Refused(format!(
                "{service} already runs what release {} ran",
                target.number
            )));
        }
        let mut spec = spec;
        spec.services
            .insert(service.to_string(), target.definition.clone());
        self.revision += 1;
        let revision = self.revision;
        self.out.effects.push(Effect::RecordRevision {
            revision,
            spec: Box::new(spec.clone()),
        });
        let live_row = releases
            .iter()
            .rev()
            .find(|r| r.status == ReleaseStatus::Live)
            .cloned();
        let number = self.record_release(
            service,
            &target.definition,
            live_row.as_ref(),
            revision,
            Some(format!("rollback to release {}", target.number)),
        );
        for interrupted in releases
            .iter()
            .filter(|r| r.status == ReleaseStatus::Deploying)
        {
            self.set_release_status(
                service,
                interrupted.number,
                ReleaseStatus::Failed,
                Some(format!("interrupted by release {number}")),
            );
        }
        self.out.emit(
            service,
            "",
            EventKind::Rollback,
            format!(
                "release {number}: back to what release {} ran",
                target.number
            ),
        );
        let strategy =
            DeployStrategy::of(&target.definition, live_row.as_ref().map(|l| &l.definition));
        let progress = self.new_progress(service, number, strategy);
        self.out.effects.push(Effect::Progress(progress.clone()));
        self.progress = BTreeMap::from([(service.to_string(), progress)]);
        self.progress_revision = revision;
        self.targets.insert(service.to_string(), number);
        self.spec = Some(spec);
        self.assign();
        if let Some(state) = self.services.get_mut(service) {
            state.converge = Converge::Waiting;
        }
        Ok(())
    }
}
