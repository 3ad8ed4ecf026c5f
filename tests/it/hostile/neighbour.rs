//! Another tenant, on a HubSpot account of its own, whose work must go on
//! while a hostile case runs beside it: its CRM edits still arrive by delta
//! and its platform writes still reach its CRM. The hostile cases call
//! [`Neighbour::assert_works`] while their bad record is parked.

use crate::fleet::Fleet;
use crmsync::domain::{
    CanonicalField, ConnectionId, CrmObject, RecordFields, RecordKind, RunKind, RunStatus, TenantId,
};
use crmsync::jobs::{DeltaProgress, DeltaSyncJob, FullSyncJob, PushChangesJob};
use crmsync::store::Credentials;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};

/// A tenant with one connection to a second sandbox account, fully synced.
pub(crate) struct Neighbour {
    pub tenant: TenantId,
    pub connection: ConnectionId,
    portal: u64,
    token: String,
    /// Rounds of [`Self::assert_works`] so far (each writes new values).
    rounds: AtomicU32,
}

impl Neighbour {
    /// A new sandbox account with two contacts, a tenant connected to it,
    /// and its first full sync (run in-process, page by page).
    pub(crate) async fn start(fleet: &Fleet) -> Self {
        let account = fleet
            .sandbox
            .post_control("/_sandbox/accounts", json!({}))
            .await;
        assert!(account.status.is_success(), "{:?}", account.body);
        let portal = account.body["portalId"].as_u64().expect("portalId");
        let token = account.body["privateAppToken"]
            .as_str()
            .expect("token")
            .to_string();
        let seeded = fleet
            .sandbox
            .post_control(
                &format!("/_sandbox/accounts/{portal}/seed"),
                json!({"contacts": 2}),
            )
            .await;
        assert!(seeded.status.is_success(), "{:?}", seeded.body);
        let name = format!("neighbour-{}", uuid::Uuid::now_v7().simple());
        let tenant = fleet.store.create_tenant(&name).await.expect("tenant").id;
        let credentials = Credentials::PrivateAppToken {
            token: SecretString::from(token.clone()),
        };
        let (connection, _) = crmsync::cli::connect_hubspot_token(
            &fleet.settings,
            &fleet.store,
            tenant,
            credentials,
            Some(portal),
        )
        .await
        .expect("the neighbour connects");
        let run = fleet
            .store
            .start_run(tenant, connection, CrmObject::Contacts, RunKind::FullSync)
            .await
            .expect("run");
        let plan = FullSyncJob {
            tenant,
            connection,
            object: CrmObject::Contacts,
            run: run.id,
            partition: None,
            page: 0,
            attempt: 0,
            deferrals: 0,
            redrives: 0,
        };
        crmsync::jobs::full_sync::run(&plan, &fleet.deps)
            .await
            .expect("the neighbour's full-sync plan");
        // Two contacts: one partition, the whole list.
        let mut page = FullSyncJob {
            partition: Some(0),
            ..plan
        };
        loop {
            crmsync::jobs::full_sync::run(&page, &fleet.deps)
                .await
                .expect("the neighbour's full-sync page");
            let row = fleet.store.run(tenant, run.id).await.expect("run");
            if row.status != RunStatus::Running {
                assert_eq!(row.status, RunStatus::Succeeded, "{row:?}");
                break;
            }
            page = page.next_page();
        }
        let neighbour = Self {
            tenant,
            connection,
            portal,
            token,
            rounds: AtomicU32::new(0),
        };
        assert_eq!(
            neighbour.leads(fleet).await.len(),
            2,
            "the neighbour's contacts landed"
        );
        neighbour
    }

    async fn leads(&self, fleet: &Fleet) -> Vec<RecordFields> {
        fleet
            .store
            .records(self.tenant, RecordKind::Lead)
            .await
            .expect("the neighbour's leads")
            .into_iter()
            .map(|(_, f)| f)
            .collect()
    }

    /// A CRM user's edit of one of its contacts arrives by delta, and a
    /// lead made on its platform is pushed to its CRM: neither is held
    /// back by what happens to the other tenant.
    pub(crate) async fn assert_works(&self, fleet: &Fleet) {
        let round = self.rounds.fetch_add(1, Ordering::Relaxed);
        let first = format!("Neighbour{round}");
        let listed = fleet
            .sandbox
            .send(
                Method::GET,
                "/crm/v3/objects/contacts?limit=1",
                None,
                Some(&self.token),
            )
            .await;
        let id: u64 = listed.body["results"][0]["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("a contact of the neighbour");
        let edit = fleet
            .sandbox
            .post_control(
                &format!(
                    "/_sandbox/accounts/{}/objects/contacts/bulk-update",
                    self.portal
                ),
                json!({"ids": [id], "properties": {"firstname": first}}),
            )
            .await;
        assert!(edit.status.is_success(), "{:?}", edit.body);
        let mut job = DeltaSyncJob {
            tenant: self.tenant,
            connection: self.connection,
            object: Some(CrmObject::Contacts),
            trigger: format!("neighbour-{}", uuid::Uuid::now_v7()),
            attempt: 0,
            resume: None,
            redrives: 0,
        };
        loop {
            let outcome =
                crmsync::jobs::delta_sync::run(&job, &fleet.deps, &mut DeltaProgress::default())
                    .await
                    .expect("the neighbour's delta succeeds");
            match outcome.resume {
                None => break,
                Some(resume) => job = job.follow_up(resume),
            }
        }
        assert!(
            self.leads(fleet)
                .await
                .iter()
                .any(|f| f.get(CanonicalField::FirstName) == Some(first.as_str())),
            "the neighbour's CRM edit reached its platform"
        );

        let email = format!("neighbour-{round}@example.com");
        let fields = RecordFields::new().with(CanonicalField::Email, &email);
        fleet
            .store
            .create_platform_record(self.tenant, RecordKind::Lead, &fields)
            .await
            .expect("a neighbour's platform lead");
        let push = PushChangesJob {
            tenant: self.tenant,
            connection: self.connection,
            trigger: uuid::Uuid::now_v7().to_string(),
            attempt: 0,
            redrives: 0,
        };
        let written = crmsync::jobs::push_changes::run(&push, &fleet.deps)
            .await
            .expect("the neighbour's push succeeds");
        assert_eq!(written, 1, "the neighbour's lead was written");
        let found = fleet
            .sandbox
            .send(
                Method::GET,
                &format!("/crm/v3/objects/contacts/{email}?idProperty=email"),
                None,
                Some(&self.token),
            )
            .await;
        assert!(
            found.status.is_success(),
            "{email} is not in the neighbour's CRM: {:?}",
            found.body
        );
    }
}
