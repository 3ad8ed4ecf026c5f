//! Seeding people: deterministic, realistic names, companies, emails, job
//! titles and phone numbers that every emulated CRM maps onto its own
//! records (HubSpot contacts and leads, Pipedrive persons, Zoho leads...).
//! The same seed gives the same people on every run, so benchmarks and
//! demos are repeatable.

use super::rng::SplitMix64;

/// First names (some non-ASCII, as real data has).
pub const FIRST: &[&str] = &[
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Dennis",
    "Radia",
    "Edsger",
    "Frances",
    "John",
    "Katherine",
    "Tim",
    "Hedy",
    "Donald",
    "Annie",
    "Niklaus",
    "Sophie",
    "Yukihiro",
    "Zoë",
    "José",
    "Amélie",
    "Chidi",
];
/// Last names.
pub const LAST: &[&str] = &[
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Thompson",
    "Liskov",
    "Ritchie",
    "Perlman",
    "Dijkstra",
    "Allen",
    "Backus",
    "Johnson",
    "Berners-Lee",
    "Lamarr",
    "Knuth",
    "Easley",
    "Wirth",
    "Wilson",
    "Matsumoto",
    "O'Neil",
    "Núñez",
];
/// Company names.
pub const COMPANIES: &[&str] = &[
    "Acme Corp",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Stark Industries",
    "Wayne Enterprises",
    "Wonka Industries",
    "Cyberdyne",
    "Soylent",
    "Tyrell",
    "Aperture Science",
];
/// Job titles.
pub const TITLES: &[&str] = &[
    "CTO",
    "VP Sales",
    "Head of Marketing",
    "Engineer",
    "Product Manager",
    "Founder",
    "Office Manager",
    "Data Analyst",
    "Account Executive",
];
/// Who a seeded record is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// First name.
    pub first: &'static str,
    /// Last name.
    pub last: &'static str,
    /// Employer.
    pub company: &'static str,
}

impl Name {
    /// Draws a name and company.
    pub fn draw(rng: &mut SplitMix64) -> Self {
        let first = *rng.pick(FIRST);
        let last = *rng.pick(LAST);
        let company = *rng.pick(COMPANIES);
        Self {
            first,
            last,
            company,
        }
    }
}

/// A seeded person with the fields most CRMs have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// Name and company.
    pub name: Name,
    /// `first.last.n@company.example`: the index `n` keeps emails unique.
    pub email: String,
    /// Job title.
    pub job_title: &'static str,
    /// `+1 555 ddd dddd`.
    pub phone: String,
}

impl Person {
    /// Draws the `n`-th person.
    pub fn draw(rng: &mut SplitMix64, n: u64) -> Self {
        let name = Name::draw(rng);
        let local: String = format!("{}.{}", name.first, name.last)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
            .collect::<String>()
            .to_ascii_lowercase();
        let email = format!("{local}.{n}@{}", domain(name.company));
        let job_title = *rng.pick(TITLES);
        let phone = format!("+1 555 {:03} {:04}", rng.below(1000), rng.below(10_000));
        Self {
            name,
            email,
            job_title,
            phone,
        }
    }
}

/// A company's mail domain under `.example` (never a real one).
pub fn domain(company: &str) -> String {
    let slug: String = company
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    format!("{slug}.example")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn same_seed_same_people() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        assert!((0..50).all(|n| Person::draw(&mut a, n) == Person::draw(&mut b, n)));
    }

    #[test]
    fn emails_are_plain_ascii_under_example() {
        let mut rng = SplitMix64::new(7);
        for n in 0..500 {
            let email = Person::draw(&mut rng, n).email;
            assert!(email.is_ascii() && email.ends_with(".example"), "{email}");
            assert_eq!(email.matches('@').count(), 1, "{email}");
        }
    }

    proptest! {
        #[test]
        fn people_of_different_indexes_never_share_an_email(seed: u64, n in 0u64..1_000_000, m in 0u64..1_000_000) {
            prop_assume!(n != m);
            let a = Person::draw(&mut SplitMix64::new(seed), n);
            let b = Person::draw(&mut SplitMix64::new(seed), m);
            prop_assert_ne!(a.email, b.email);
        }
    }
}
