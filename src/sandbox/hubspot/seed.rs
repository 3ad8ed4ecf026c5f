//! Deterministic, realistic records: the same seed gives the same contacts
//! and leads on every run, so benchmarks and demos are repeatable.

use std::collections::BTreeMap;
use std::time::Instant;

use super::associations::LEAD_TO_PRIMARY_CONTACT;
use super::model::{Actor, ObjectType};
use super::state::{Account, lock, now_ms};
use crate::sandbox::people::{Name, Person};
use crate::sandbox::rng::SplitMix64;

const STATUSES: &[&str] = &[
    "NEW",
    "OPEN",
    "IN_PROGRESS",
    "OPEN_DEAL",
    "UNQUALIFIED",
    "ATTEMPTED_TO_CONTACT",
    "CONNECTED",
    "BAD_TIMING",
];

/// Values of the `n`-th seeded contact.
pub fn contact_values(rng: &mut SplitMix64, n: u64) -> BTreeMap<String, String> {
    let person = Person::draw(rng, n);
    let mut v = BTreeMap::new();
    v.insert("email".into(), person.email);
    v.insert("firstname".into(), person.name.first.into());
    v.insert("lastname".into(), person.name.last.into());
    v.insert("company".into(), person.name.company.into());
    v.insert("jobtitle".into(), person.job_title.into());
    v.insert("phone".into(), person.phone);
    v.insert("hs_lead_status".into(), (*rng.pick(STATUSES)).into());
    v
}

/// Values of the `n`-th seeded lead.
pub fn lead_values(rng: &mut SplitMix64, n: u64) -> BTreeMap<String, String> {
    let Name {
        first,
        last,
        company,
    } = Name::draw(rng);
    let mut v = BTreeMap::new();
    v.insert(
        "hs_lead_name".into(),
        format!("{first} {last} ({company}) #{n}"),
    );
    v.insert(
        "hs_lead_type".into(),
        (*rng.pick(&["NEW_BUSINESS", "EXISTING_BUSINESS"])).into(),
    );
    v.insert(
        "hs_lead_label".into(),
        (*rng.pick(&["COLD", "WARM", "HOT"])).into(),
    );
    v.insert("hs_pipeline".into(), "lead-pipeline-id".into());
    v.insert("hs_pipeline_stage".into(), "new-stage-id".into());
    v
}

/// The lead name of a seeded lead for its contact: "First Last (Company) #n".
fn lead_name(contact: &BTreeMap<String, String>, n: u64) -> String {
    let get = |k: &str| contact.get(k).map(String::as_str).unwrap_or_default();
    format!(
        "{} {} ({}) #{n}",
        get("firstname"),
        get("lastname"),
        get("company")
    )
}

/// Adds `contacts` contacts and `leads` leads as a CRM user (an import: no
/// webhooks, like HubSpot's imports which do not fire per-record events to
/// every app). Returns the ids created. Search sees them at once.
///
/// HubSpot requires every lead to have a contact, so each seeded lead gets a
/// "Lead to primary contact" (578) edge and its name from that person: lead
/// `i` goes to the `i mod n`-th contact seeded by this call, and when this
/// call seeds no contacts, each lead gets a contact of its own (returned with
/// the contacts). Seeding contacts first keeps the contact count what callers
/// asked for. Same seed, same data.
pub fn seed(account: &Account, contacts: u64, leads: u64, seed: u64) -> (Vec<u64>, Vec<u64>) {
    let mut rng = SplitMix64::new(seed);
    let actor = Actor::User { user_id: 1 };
    let clock = Instant::now();
    let now = now_ms();
    let mut data = lock(&account.data);
    let offset = data.contacts.objects.len() as u64;
    let mut contact_ids = Vec::with_capacity(contacts as usize);
    for n in 0..contacts {
        let values = contact_values(&mut rng, offset + n);
        let id = data.allocate_id();
        // Seeded emails carry their index, so they never clash.
        if data
            .store(ObjectType::Contacts)
            .create(id, values, actor, now, clock, std::time::Duration::ZERO)
            .is_ok()
        {
            contact_ids.push(id);
        }
    }
    let seeded_contacts = contact_ids.clone();
    let lead_offset = data.leads.objects.len() as u64;
    let mut lead_ids = Vec::with_capacity(leads as usize);
    for n in 0..leads {
        let mut values = lead_values(&mut rng, lead_offset + n);
        let contact = if seeded_contacts.is_empty() {
            let contact_values = contact_values(&mut rng, data.contacts.objects.len() as u64);
            let id = data.allocate_id();
            let created = data
                .store(ObjectType::Contacts)
                .create(
                    id,
                    contact_values,
                    actor,
                    now,
                    clock,
                    std::time::Duration::ZERO,
                )
                .is_ok();
            created.then(|| {
                contact_ids.push(id);
                id
            })
        } else {
            seeded_contacts
                .get((n as usize) % seeded_contacts.len())
                .copied()
        };
        // A lead without its contact would break HubSpot's rule: skip it.
        let Some(contact) = contact else { continue };
        if let Some(person) = data.contacts.objects.get(&contact) {
            values.insert(
                "hs_lead_name".into(),
                lead_name(&person.values, lead_offset + n),
            );
        }
        let id = data.allocate_id();
        if data
            .store(ObjectType::Leads)
            .create(id, values, actor, now, clock, std::time::Duration::ZERO)
            .is_ok()
        {
            data.associations
                .associate(id, contact, LEAD_TO_PRIMARY_CONTACT);
            lead_ids.push(id);
        }
    }
    (contact_ids, lead_ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_contact_is_its_person_plus_a_lead_status() {
        let person = Person::draw(&mut SplitMix64::new(42), 3);
        let contact = contact_values(&mut SplitMix64::new(42), 3);
        assert_eq!(contact["email"], person.email);
        assert_eq!(contact["firstname"], person.name.first);
        assert_eq!(contact["company"], person.name.company);
        assert_eq!(contact["phone"], person.phone);
        assert!(STATUSES.contains(&contact["hs_lead_status"].as_str()));
    }
}
