//! Two tenants connected to one HubSpot portal through the same app. Our
//! app's writes are "our own" only for the link that pushed them: for the
//! other tenant they are CRM edits like any other — even while its own push
//! of the same record is in flight.

use crate::fleet::{Fleet, on_both_backends, wait_for};
use crate::support::{PORTAL, TOKEN};
use crmsync::domain::{CanonicalField, CrmId, CrmObject, RecordKind};
use crmsync::store::Credentials;
use secrecy::SecretString;

/// The value of `property` on the HubSpot contact with `email`.
async fn in_hubspot(fleet: &Fleet, email: &str, property: &str) -> Option<(String, String)> {
    fleet
        .sandbox_contacts()
        .await
        .into_iter()
        .find(|(_, p)| p["email"].as_str().map(str::to_lowercase).as_deref() == Some(email))
        .map(|(id, p)| (id, p[property].as_str().unwrap_or("").to_string()))
}

/// The current tenant's lead's `field`.
async fn platform_value(fleet: &Fleet, email: &str, field: CanonicalField) -> Option<String> {
    let (_, fields) = fleet.lead_by_email(email).await?;
    fields.get(field).map(str::to_string)
}

on_both_backends! {
    async fn one_tenants_push_is_a_crm_edit_for_another_tenant_on_the_same_portal(backend) {
        let mut fleet = Fleet::start(backend, 5).await;
        fleet.start_workers();
        fleet.full_sync().await;
        let (tenant_a, connection_a) = (fleet.tenant, fleet.connection);
        let tenant_b = fleet.store.create_tenant("second").await.expect("tenant").id;
        let credentials = Credentials::PrivateAppToken { token: SecretString::from(TOKEN) };
        let (connection_b, _) = crmsync::cli::connect_hubspot_token(
            &fleet.settings, &fleet.store, tenant_b, credentials, None,
        )
        .await
        .expect("second connection to the same portal");
        (fleet.tenant, fleet.connection) = (tenant_b, connection_b);
        fleet.full_sync().await;

        // A lead both tenants hold.
        (fleet.tenant, fleet.connection) = (tenant_a, connection_a);
        let (lead_a, fields) = fleet
            .store
            .records(tenant_a, RecordKind::Lead)
            .await
            .expect("records")
            .into_iter()
            .next()
            .expect("a lead");
        let email = fields.get(CanonicalField::Email).expect("email").to_string();
        let (crm_id, _) = in_hubspot(&fleet, &email, "company").await.expect("in HubSpot");
        assert!(platform_value(&fleet, &email, CanonicalField::Company).await.is_some_and(|c| c != "Pushed by A"));

        // Tenant B and a HubSpot user both change the first name, so B's
        // delta reads this record with property history — which names our
        // app as the source of the company A is about to push.
        (fleet.tenant, fleet.connection) = (tenant_b, connection_b);
        let (lead_b, _) = fleet.lead_by_email(&email).await.expect("B's lead");
        (fleet.tenant, fleet.connection) = (tenant_a, connection_a);
        fleet
            .store
            .patch_platform_record(tenant_b, RecordKind::Lead, lead_b, |mut f| {
                f.set(CanonicalField::FirstName, "Set by B");
                Ok(f)
            })
            .await
            .expect("patch")
            .expect("lead");
        let reply = fleet
            .sandbox
            .control(
                reqwest::Method::PATCH,
                &format!("/_sandbox/accounts/{PORTAL}/objects/contacts/{crm_id}"),
                Some(serde_json::json!({"properties": {"firstname": "Set by a user"}})),
            )
            .await;
        assert!(reply.status.is_success(), "{:?}", reply.body);

        // Tenant B's push of this record is in flight (or its worker died
        // mid-push): its link's push window is open for the next minute.
        fleet
            .store
            .mark_pushing(
                tenant_b,
                connection_b,
                CrmObject::Contacts,
                &[CrmId(crm_id.clone())],
                chrono::Utc::now() + chrono::Duration::seconds(60),
            )
            .await
            .expect("mark");

        // Tenant A changes the company and pushes it.
        fleet
            .store
            .patch_platform_record(tenant_a, RecordKind::Lead, lead_a, |mut f| {
                f.set(CanonicalField::Company, "Pushed by A");
                Ok(f)
            })
            .await
            .expect("patch")
            .expect("lead");
        fleet.enqueue_push().await;
        wait_for("A's push in HubSpot", || async {
            in_hubspot(&fleet, &email, "company").await.map(|(_, c)| c).as_deref() == Some("Pushed by A")
        })
        .await;

        // For tenant B that write is HubSpot's: its delta takes it.
        (fleet.tenant, fleet.connection) = (tenant_b, connection_b);
        fleet.delta_sync().await;
        assert_eq!(
            platform_value(&fleet, &email, CanonicalField::Company).await.as_deref(),
            Some("Pushed by A"),
            "tenant B has tenant A's change"
        );
        assert_eq!(
            platform_value(&fleet, &email, CanonicalField::FirstName).await.as_deref(),
            Some("Set by a user"),
            "the newer edit wins"
        );
        // Tenant A's own echo changes nothing there, and nothing is written back.
        (fleet.tenant, fleet.connection) = (tenant_a, connection_a);
        let echo = fleet.delta_sync().await;
        assert_eq!((echo.created, echo.updated), (0, 0), "{echo:?}");
        assert_eq!(
            in_hubspot(&fleet, &email, "company").await.map(|(_, c)| c).as_deref(),
            Some("Pushed by A")
        );
        fleet.finish().await;
    }
}
