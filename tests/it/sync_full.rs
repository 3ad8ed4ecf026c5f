//! Full sync through the queue and workers: complete, exactly once, and
//! idempotent when run again.

use crate::fleet::{Fleet, on_both_backends};

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
