//! Values a CRM keeps unique across the live records of a type (HubSpot's
//! contact email and `hasUniqueValue` properties; Pipedrive and Zoho have
//! their own), each mapped to the record holding it. Generic over the id,
//! so numeric and string ids share it; the CRM says how values compare.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// How a CRM compares a property's values (e.g. emails case-insensitively).
pub type Normalise = fn(property: &str, value: &str) -> String;

/// Unique property → normalised value → the live record holding it.
#[derive(Debug, Clone)]
pub struct UniqueIndex<Id> {
    by_property: HashMap<String, HashMap<String, Id>>,
    normalise: Normalise,
}

/// A value another record already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clash<Id> {
    /// The unique property.
    pub property: String,
    /// The value as written.
    pub value: String,
    /// The record holding it.
    pub holder: Id,
}

impl<Id: Clone + Eq + Hash> UniqueIndex<Id> {
    /// An index of no properties yet.
    pub fn new(normalise: Normalise) -> Self {
        Self {
            by_property: HashMap::new(),
            normalise,
        }
    }

    /// Keeps `property` unique, indexing the given live records' values.
    pub fn track<'a>(
        &mut self,
        property: &str,
        live: impl IntoIterator<Item = (Id, &'a BTreeMap<String, String>)>,
    ) {
        let mut index = HashMap::new();
        for (id, values) in live {
            if let Some(v) = values.get(property) {
                index.insert((self.normalise)(property, v), id);
            }
        }
        self.by_property.insert(property.to_string(), index);
    }

    /// Whether `property` is kept unique.
    pub fn tracks(&self, property: &str) -> bool {
        self.by_property.contains_key(property)
    }

    /// The record holding `value` of `property`.
    pub fn holder(&self, property: &str, value: &str) -> Option<&Id> {
        self.by_property
            .get(property)?
            .get(&(self.normalise)(property, value))
    }

    /// The first non-empty value in `values` a record other than `except` holds.
    pub fn clash(
        &self,
        values: &BTreeMap<String, String>,
        except: Option<&Id>,
    ) -> Option<Clash<Id>> {
        values
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .find_map(|(property, value)| {
                let holder = self.holder(property, value)?;
                (Some(holder) != except).then(|| Clash {
                    property: property.clone(),
                    value: value.clone(),
                    holder: holder.clone(),
                })
            })
    }

    /// Indexes a live record's values.
    pub fn insert(&mut self, id: &Id, values: &BTreeMap<String, String>) {
        for (property, index) in self.by_property.iter_mut() {
            if let Some(v) = values.get(property) {
                index.insert((self.normalise)(property, v), id.clone());
            }
        }
    }

    /// Forgets a record's values (those it still holds).
    pub fn remove(&mut self, id: &Id, values: &BTreeMap<String, String>) {
        for (property, index) in self.by_property.iter_mut() {
            if let Some(v) = values.get(property) {
                let key = (self.normalise)(property, v);
                if index.get(&key) == Some(id) {
                    index.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lower_email(property: &str, value: &str) -> String {
        if property == "email" {
            value.trim().to_ascii_lowercase()
        } else {
            value.to_string()
        }
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn string_ids_clash_on_the_crms_notion_of_equal() {
        let mut index: UniqueIndex<String> = UniqueIndex::new(lower_email);
        index.track("email", []);
        let ann = values(&[("email", "Ann@x.io")]);
        index.insert(&"zcrm_1".to_string(), &ann);
        let clash = index
            .clash(&values(&[("email", " ann@X.io")]), None)
            .unwrap();
        assert_eq!(clash.holder, "zcrm_1");
        assert_eq!(clash.value, " ann@X.io");
        assert!(
            index.clash(&ann, Some(&"zcrm_1".to_string())).is_none(),
            "a record never clashes with itself"
        );
        assert!(
            index.clash(&values(&[("email", "")]), None).is_none(),
            "empty values are never unique"
        );
    }

    #[test]
    fn a_removed_record_frees_its_values_but_not_a_new_holders() {
        let mut index: UniqueIndex<u64> = UniqueIndex::new(lower_email);
        index.track("email", []);
        let v = values(&[("email", "a@x.io")]);
        index.insert(&1, &v);
        index.insert(&2, &v);
        index.remove(&1, &v);
        assert_eq!(index.holder("email", "A@X.IO"), Some(&2));
        index.remove(&2, &v);
        assert_eq!(index.holder("email", "a@x.io"), None);
    }

    #[test]
    fn tracking_a_property_later_indexes_the_existing_records() {
        let mut index: UniqueIndex<u64> = UniqueIndex::new(lower_email);
        let v = values(&[("code", "X1")]);
        assert!(!index.tracks("code"));
        index.track("code", [(5, &v)]);
        assert!(index.tracks("code"));
        assert_eq!(index.holder("code", "X1"), Some(&5));
        assert_eq!(index.holder("code", "x1"), None);
    }
}
