//! The platform's canonical lead/contact fields and their normal form, which
//! fingerprints, dedupe and merge all compare.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A platform field that providers map to and from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CanonicalField {
    /// Also the dedupe key (normalised: trimmed, lowercase).
    Email,
    /// Given name.
    FirstName,
    /// Family name.
    LastName,
    /// Company name.
    Company,
    /// Job title.
    JobTitle,
    /// Phone number as entered.
    Phone,
    /// Lead status: `new`, `contacted`, `qualified`, `unqualified`.
    Status,
}

impl CanonicalField {
    /// Every field, in canonical order.
    pub const ALL: [CanonicalField; 7] = [
        Self::Email,
        Self::FirstName,
        Self::LastName,
        Self::Company,
        Self::JobTitle,
        Self::Phone,
        Self::Status,
    ];

    /// The api's (camelCase) name, also stored in audit and conflict rows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::FirstName => "firstName",
            Self::LastName => "lastName",
            Self::Company => "company",
            Self::JobTitle => "jobTitle",
            Self::Phone => "phone",
            Self::Status => "status",
        }
    }
}

impl std::str::FromStr for CanonicalField {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown field {s:?}"))
    }
}

/// A record's field values in normal form: trimmed, emails lowercased, and an
/// empty value is the same as an absent one. Built only through [`Self::set`],
/// so two values that mean the same thing are equal and fingerprint equally.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecordFields(BTreeMap<CanonicalField, String>);

impl RecordFields {
    /// An empty set of fields.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a field, normalising it; an empty value removes the field.
    pub fn set(&mut self, field: CanonicalField, value: &str) {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            self.0.remove(&field);
        } else if field == CanonicalField::Email {
            self.0.insert(field, trimmed.to_lowercase());
        } else {
            self.0.insert(field, trimmed.to_string());
        }
    }

    /// Builder form of [`Self::set`].
    pub fn with(mut self, field: CanonicalField, value: &str) -> Self {
        self.set(field, value);
        self
    }

    /// A field's value, if present.
    pub fn get(&self, field: CanonicalField) -> Option<&str> {
        self.0.get(&field).map(String::as_str)
    }

    /// Fields in canonical order.
    pub fn iter(&self) -> impl Iterator<Item = (CanonicalField, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str()))
    }

    /// The dedupe key: the normalised email, if any.
    pub fn normalized_email(&self) -> Option<&str> {
        self.get(CanonicalField::Email)
    }

    /// A stable hash of the values, equal exactly when the normal forms are
    /// equal; links store it to recognise unchanged records and our own echo.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        for (field, value) in &self.0 {
            // Length-prefixed so that no two different maps hash the same input.
            let name = serde_json::to_string(field).unwrap_or_default();
            hasher.update((name.len() as u64).to_be_bytes());
            hasher.update(name.as_bytes());
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(value.as_bytes());
        }
        let digest = hasher.finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The same values normalised again, for rows read back from storage
    /// (written perhaps before a normalisation change, or edited by hand).
    pub fn renormalized(self) -> Self {
        let mut fields = Self::new();
        for (k, v) in self.0 {
            fields.set(k, &v);
        }
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_field() -> impl Strategy<Value = CanonicalField> {
        prop_oneof![
            Just(CanonicalField::Email),
            Just(CanonicalField::FirstName),
            Just(CanonicalField::LastName),
            Just(CanonicalField::Company),
            Just(CanonicalField::Phone),
        ]
    }

    proptest! {
        #[test]
        fn fingerprint_ignores_whitespace_and_email_case(
            field in any_field(), value in "[a-zA-Z0-9@. ]{0,20}", pad in " {0,3}"
        ) {
            let a = RecordFields::new().with(field, &value);
            let b = RecordFields::new().with(field, &format!("{pad}{}{pad}", if field == CanonicalField::Email { value.to_uppercase() } else { value.clone() }));
            prop_assert_eq!(a.fingerprint(), b.fingerprint());
            prop_assert_eq!(a, b);
        }

        #[test]
        fn different_values_give_different_fingerprints(a in "[a-z]{1,12}", b in "[a-z]{1,12}") {
            prop_assume!(a != b);
            let fa = RecordFields::new().with(CanonicalField::FirstName, &a);
            let fb = RecordFields::new().with(CanonicalField::FirstName, &b);
            prop_assert_ne!(fa.fingerprint(), fb.fingerprint());
            // Moving a value to another field changes the fingerprint too.
            let moved = RecordFields::new().with(CanonicalField::LastName, &a);
            prop_assert_ne!(fa.fingerprint(), moved.fingerprint());
        }
    }

    #[test]
    fn empty_value_is_absent() {
        let fields = RecordFields::new()
            .with(CanonicalField::Phone, "123")
            .with(CanonicalField::Phone, "  ");
        assert_eq!(fields, RecordFields::new());
    }
}
