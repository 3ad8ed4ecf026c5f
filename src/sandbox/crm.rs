//! Which emulated CRMs a sandbox process serves (`crmsync-sandbox --crm`).

use std::fmt;
use std::str::FromStr;

/// One emulated CRM. Each has its own folder under `src/sandbox/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Crm {
    /// `src/sandbox/hubspot/`.
    Hubspot,
}

impl Crm {
    /// Every CRM the sandbox can emulate, in the order `--help` lists them.
    pub const ALL: &'static [Crm] = &[Crm::Hubspot];

    /// The name `--crm` takes.
    pub fn name(self) -> &'static str {
        match self {
            Crm::Hubspot => "hubspot",
        }
    }

    /// The known names, comma-separated, for messages.
    pub fn known_names() -> String {
        Self::ALL
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Crm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--crm` value the sandbox does not know, or an empty or repeated one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrmListError {
    /// Not one of [`Crm::ALL`].
    #[error("unknown CRM {given:?}; known: {known}")]
    Unknown {
        /// What was given.
        given: String,
        /// [`Crm::known_names`].
        known: String,
    },
    /// Nothing between two commas, or an empty value.
    #[error("empty CRM name in --crm; known: {0}")]
    Empty(String),
    /// The same CRM twice: it would need two servers of one kind.
    #[error("CRM {0} is listed twice")]
    Repeated(Crm),
}

impl FromStr for Crm {
    type Err = CrmListError;

    /// Case-insensitive, surrounding spaces ignored.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let wanted = raw.trim();
        if wanted.is_empty() {
            return Err(CrmListError::Empty(Self::known_names()));
        }
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| CrmListError::Unknown {
                given: wanted.to_string(),
                known: Self::known_names(),
            })
    }
}

/// Parses `--crm`'s comma-separated list, keeping its order (the first CRM
/// gets `--listen`'s port, each next one the port after).
pub fn parse_crm_list(raw: &str) -> Result<Vec<Crm>, CrmListError> {
    let mut crms = Vec::new();
    for part in raw.split(',') {
        let crm: Crm = part.parse()?;
        if crms.contains(&crm) {
            return Err(CrmListError::Repeated(crm));
        }
        crms.push(crm);
    }
    Ok(crms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hubspot_is_known_in_any_case_and_with_spaces() {
        assert_eq!(parse_crm_list("hubspot"), Ok(vec![Crm::Hubspot]));
        assert_eq!(parse_crm_list(" HubSpot "), Ok(vec![Crm::Hubspot]));
    }

    #[test]
    fn an_unknown_crm_is_refused_with_the_known_ones_listed() {
        let err = parse_crm_list("hubspot,salesforse").unwrap_err();
        assert_eq!(
            err,
            CrmListError::Unknown {
                given: "salesforse".into(),
                known: "hubspot".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "unknown CRM \"salesforse\"; known: hubspot"
        );
    }

    #[test]
    fn empty_and_repeated_entries_are_refused() {
        assert!(matches!(parse_crm_list(""), Err(CrmListError::Empty(_))));
        assert!(matches!(
            parse_crm_list("hubspot,"),
            Err(CrmListError::Empty(_))
        ));
        assert_eq!(
            parse_crm_list("hubspot,HUBSPOT"),
            Err(CrmListError::Repeated(Crm::Hubspot))
        );
    }

    #[test]
    fn every_known_name_parses_back_to_itself() {
        for crm in Crm::ALL {
            assert_eq!(crm.name().parse::<Crm>(), Ok(*crm));
        }
    }
}
