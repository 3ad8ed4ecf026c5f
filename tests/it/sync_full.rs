//! Full sync through the queue and workers: complete, exactly once, and
//! idempotent when run again.

use crate::fleet::{Backend, Fleet, assert_mirrors_sandbox, on_both_backends};
use crmsync::domain::{
    CrmId, CrmObject, Partition, ProviderKind, RecordKind, RunId, RunKind, RunStatus,
};
use crmsync::jobs::full_sync::{self, FullSyncJob};
use crmsync::store::{FullSyncPage, PageApplied, PageWrite};
use crmsync::sync::ConflictStrategy;
use std::time::Duration;

on_both_backends! {
    async fn a_contact_recreated_in_the_crm_links_to_the_same_lead_by_email(backend) {
        let mut fleet = Fleet::start(backend, 0).await;
        fleet.start_workers();
        let first = fleet.sandbox.create_contact("Ada@Example.com").await;
        fleet.full_sync().await;
        assert_eq!(fleet.leads().await.len(), 1);
        // Deleted and created again in HubSpot: a new CRM id, the same person.
        let path = format!("/_sandbox/accounts/{}/objects/contacts/{first}", crate::support::PORTAL);
        let deleted = fleet.sandbox.control(reqwest::Method::DELETE, &path, None).await;
        assert!(deleted.status.is_success(), "{:?}", deleted.body);
        let second = fleet.sandbox.create_contact(" ada@example.COM ").await;
        assert_ne!(first, second);
        let run = fleet.full_sync().await;
        assert_eq!((run.created, run.updated), (0, 1), "{run:?}");
        assert_eq!(fleet.leads().await.len(), 1, "same normalised email, one lead");
        fleet.finish().await;
    }
}

/// The plan job of `run`, as `start_full_sync` enqueues it.
fn plan_job(fleet: &Fleet, run: RunId) -> FullSyncJob {
    FullSyncJob {
        tenant: fleet.tenant,
        connection: fleet.connection,
        object: CrmObject::Contacts,
        run,
        partition: None,
        page: 0,
        attempt: 0,
        deferrals: 0,
        redrives: 0,
    }
}

on_both_backends! {
    async fn a_full_sync_pages_id_ranges_side_by_side_and_lands_records_created_after_its_plan(backend) {
        let mut fleet = Fleet::start(backend, 2_000).await;
        let run = fleet.start_full_sync().await;
        // The plan runs here, before any worker: a contact created now has
        // an id above every bound the plan saw.
        let plan = plan_job(&fleet, run.id);
        full_sync::run(&plan, &fleet.deps).await.expect("plan");
        let planned = fleet.store.run_partitions(fleet.tenant, run.id).await.expect("partitions");
        assert_eq!(planned.len(), fleet.settings.sync.full_sync_partitions as usize, "{planned:?}");
        assert!(
            planned.iter().all(|p| matches!(p.partition, Partition::Ids { .. })),
            "HubSpot lists by id range: {planned:?}"
        );
        // Planning again (a restart, a re-drive) keeps the plan.
        full_sync::run(&plan, &fleet.deps).await.expect("plan again");
        assert_eq!(fleet.store.run_partitions(fleet.tenant, run.id).await.expect("partitions"), planned);
        fleet.sandbox.create_contact("late@example.com").await;

        fleet.start_workers();
        let done = fleet.wait_run(run.id, Duration::from_secs(120)).await;
        assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
        assert_eq!((done.processed, done.created, done.failed), (2_001, 2_001, 0), "every record once: {done:?}");
        let partitions = fleet.store.run_partitions(fleet.tenant, run.id).await.expect("partitions");
        assert!(partitions.iter().all(|p| p.finished && p.pages_done >= 1), "{partitions:?}");
        assert_eq!(
            partitions.iter().map(|p| p.pages_done).sum::<i64>(),
            done.pages_done,
            "the run counts its partitions' pages"
        );
        // 2,001 records at most 200 a page.
        assert!(done.pages_done >= 11, "{done:?}");
        assert!(fleet.lead_by_email("late@example.com").await.is_some(), "the last range is open upwards");
        assert_mirrors_sandbox(&fleet).await;
        fleet.finish().await;
    }
}

on_both_backends! {
    async fn a_small_object_is_listed_whole_in_one_chain(backend) {
        let mut fleet = Fleet::start(backend, 150).await;
        fleet.start_workers();
        let done = fleet.full_sync().await;
        let partitions = fleet.store.run_partitions(fleet.tenant, done.id).await.expect("partitions");
        assert_eq!(partitions.len(), 1, "{partitions:?}");
        assert_eq!(partitions[0].partition, Partition::Whole);
        // HubSpot lists at most 100 a page, whatever full_page_size says.
        assert_eq!((done.created, done.pages_done), (150, 2), "{done:?}");
        fleet.finish().await;
    }
}

/// A run the previous release left half done (its page count and list token
/// on the run row, its next page job queued without a partition) goes on
/// from that token as one whole-list partition: nothing read twice, nothing
/// skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_paged_before_partitions_goes_on_from_its_own_token() {
    use sqlx::Connection;
    let mut fleet = Fleet::start(Backend::Postgres, 500).await;
    let first = fleet
        .sandbox
        .get("/crm/v3/objects/contacts?limit=100&archived=false")
        .await;
    let token = first.body["paging"]["next"]["after"]
        .as_str()
        .expect("a next page")
        .to_string();
    let run = fleet
        .store
        .start_run(
            fleet.tenant,
            fleet.connection,
            CrmObject::Contacts,
            RunKind::FullSync,
        )
        .await
        .expect("run");
    let mut owner = sqlx::PgConnection::connect(&fleet.owner_database_url().expect("owner url"))
        .await
        .expect("owner connection");
    sqlx::query("UPDATE sync_runs SET pages_done = 1, page_token = $1 WHERE id = $2")
        .bind(&token)
        .bind(run.id.0)
        .execute(&mut owner)
        .await
        .expect("the previous release's page state");
    // The job as the previous release queued it (no partition field).
    let queued: FullSyncJob = serde_json::from_value(serde_json::json!({
        "tenant": fleet.tenant, "connection": fleet.connection, "object": "contacts",
        "run": run.id, "page": 1, "attempt": 0
    }))
    .expect("an old job still reads");
    fleet
        .deps
        .queue
        .push_full_sync(&queued)
        .await
        .expect("enqueue");
    fleet.start_workers();
    let done = fleet.wait_run(run.id, Duration::from_secs(60)).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    // The first 100 were the previous release's page: not read again.
    assert_eq!(
        (done.processed, done.created, done.pages_done),
        (400, 400, 5),
        "{done:?}"
    );
    let partitions = fleet
        .store
        .run_partitions(fleet.tenant, run.id)
        .await
        .expect("partitions");
    assert_eq!(partitions.len(), 1, "{partitions:?}");
    assert_eq!(
        (
            &partitions[0].partition,
            partitions[0].pages_done,
            partitions[0].finished
        ),
        (&Partition::Whole, 5, true)
    );
    let first_ids: Vec<&str> = first.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    let linked = fleet
        .store
        .live_crm_ids(fleet.tenant, fleet.connection, CrmObject::Contacts)
        .await
        .expect("links");
    assert_eq!(linked.len(), 400);
    assert!(
        first_ids.iter().all(|id| !linked.iter().any(|l| l == id)),
        "page 0 was not read again"
    );
    fleet.finish().await;
}

/// Partitions whose last pages commit at the same moment end the run once,
/// with the last of them: each page takes the run's row lock before its
/// partition, so the second to finish sees the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_finishing_at_once_end_the_run_with_the_last() {
    let fleet = Fleet::start(Backend::Postgres, 0).await;
    for _ in 0..10 {
        let run = fleet
            .store
            .start_run(
                fleet.tenant,
                fleet.connection,
                CrmObject::Contacts,
                RunKind::FullSync,
            )
            .await
            .expect("run");
        let plan: Vec<Partition> = (0..4)
            .map(|i: u32| Partition::Ids {
                after: (i > 0).then(|| CrmId((i * 100).to_string())),
                through: (i < 3).then(|| CrmId(((i + 1) * 100).to_string())),
            })
            .collect();
        fleet
            .store
            .plan_partitions(fleet.tenant, run.id, &plan)
            .await
            .expect("plan");
        let writes: Vec<PageWrite> = (0..4)
            .map(|partition| PageWrite {
                tenant: fleet.tenant,
                connection: fleet.connection,
                provider: ProviderKind::Hubspot,
                object: CrmObject::Contacts,
                kind: RecordKind::Lead,
                strategy: ConflictStrategy::default(),
                items: Vec::new(),
                run: run.id,
                full_sync_page: Some(FullSyncPage {
                    partition,
                    number: 0,
                    next_token: None,
                    finishes_partition: true,
                }),
                queue_pushes: true,
                refused: Vec::new(),
                cursor: None,
            })
            .collect();
        let applied =
            futures::future::join_all(writes.iter().map(|w| fleet.store.apply_page(w))).await;
        let mut finished = 0;
        for outcome in applied {
            match outcome.expect("apply") {
                PageApplied::Applied(o) => finished += usize::from(o.finished_run),
                other => panic!("each partition's page applies once: {other:?}"),
            }
        }
        assert_eq!(finished, 1, "exactly the last page ends the run");
        let row = fleet.store.run(fleet.tenant, run.id).await.expect("run");
        assert_eq!(
            (row.status, row.pages_done),
            (RunStatus::Succeeded, 4),
            "{row:?}"
        );
        // A duplicate of a committed page writes nothing.
        assert!(matches!(
            fleet.store.apply_page(&writes[0]).await.expect("apply"),
            PageApplied::AlreadyApplied
        ));
    }
    fleet.finish().await;
}
