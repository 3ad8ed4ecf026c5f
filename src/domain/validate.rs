//! The platform's rules for a field value, applied at both of its
//! boundaries: the api refuses a value that breaks one (a 400 naming the
//! field), and a CRM record holding one is parked instead of applied. One
//! rule set for both, so the platform never holds a value its own api would
//! refuse, and the store never sees a value it cannot hold (a NUL character
//! fails a Postgres `jsonb` write).

use super::{CanonicalField, RecordFields};

/// The longest value a field may hold, in characters (not bytes: `é` is one).
pub const MAX_CHARS: usize = 500;

/// The platform's lead statuses.
pub const STATUSES: &[&str] = &["new", "contacted", "qualified", "unqualified"];

/// Seconds between a connection's scheduled deltas: at least 5 (a tenant
/// cannot make the scheduler and its CRM budget spin), at most a day (the
/// delta is the safety net behind webhooks). Every due time the scheduler
/// computes stays a valid timestamp.
pub const DELTA_INTERVAL_SECS: std::ops::RangeInclusive<u64> = 5..=86_400;

/// Rows per page of an api list (`limit`).
pub const LIST_LIMIT: std::ops::RangeInclusive<i64> = 1..=200;

/// The length and control-character rules every field shares (what
/// [`check_value`] checks first, before each field's own rule).
pub fn check_text(value: &str) -> Result<(), String> {
    let value = value.trim();
    let chars = value.chars().count();
    if chars > MAX_CHARS {
        return Err(format!(
            "is {chars} characters long; at most {MAX_CHARS} are allowed"
        ));
    }
    // Tab and line breaks are text (a multi-line company name); every other
    // control character (NUL, escape, DEL, C1) is not.
    match value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        Some(c) => Err(format!(
            "holds the control character U+{:04X}",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// Why a field's value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}", field = field.as_str())]
pub struct FieldProblem {
    /// The field.
    pub field: CanonicalField,
    /// What is wrong with it, for people.
    pub reason: String,
}

impl FieldProblem {
    fn new(field: CanonicalField, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Checks one value as the platform would store it (trimmed).
pub fn check_value(field: CanonicalField, value: &str) -> Result<(), FieldProblem> {
    check_text(value).map_err(|reason| FieldProblem::new(field, reason))?;
    let value = value.trim();
    match field {
        CanonicalField::Email if !value.is_empty() && !is_valid_email(value) => Err(
            FieldProblem::new(field, format!("{value:?} is not a valid email address")),
        ),
        CanonicalField::Status if !value.is_empty() && !STATUSES.contains(&value) => {
            Err(FieldProblem::new(
                field,
                format!("{value:?} is not one of {}", STATUSES.join(", ")),
            ))
        }
        _ => Ok(()),
    }
}

/// Checks every field of a record; the first problem, in canonical order.
pub fn check_fields(fields: &RecordFields) -> Result<(), FieldProblem> {
    fields
        .iter()
        .try_for_each(|(field, value)| check_value(field, value))
}

/// The WHATWG HTML rule for `<input type=email>` ("a valid email address"):
/// a local part of letters, digits and ``.!#$%&'*+/=?^_`{|}~-``, one `@`,
/// and dot-separated labels of letters, digits and inner hyphens, each at
/// most 63 long. Deliberately narrower than RFC 5322 (no quoted local parts,
/// no comments), as browsers are: what a sign-up form accepts, we accept.
pub fn is_valid_email(value: &str) -> bool {
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b));
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        (1..=63).contains(&bytes.len())
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            && bytes.first() != Some(&b'-')
            && bytes.last() != Some(&b'-')
    };
    local_ok && domain.split('.').all(label_ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn emails_follow_the_html_rule() {
        for good in [
            "a@b",
            "a@b.co",
            "first.last+tag@sub.example.com",
            "x!#$%&'*+/=?^_`{|}~-@a-b.c",
        ] {
            assert!(is_valid_email(good), "{good}");
        }
        for bad in [
            "a@@b",
            "@b.co",
            "a@",
            "a",
            "a b@c.d",
            "a@-b.c",
            "a@b-.c",
            "a@b..c",
            "a@.b",
            "a@b.",
            "\"q\"@b.c",
            "josé@b.c",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
        let long_label = format!("a@{}.c", "b".repeat(64));
        assert!(!is_valid_email(&long_label));
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        let accented = "é".repeat(MAX_CHARS);
        assert!(accented.len() > MAX_CHARS, "two bytes each");
        assert_eq!(check_value(CanonicalField::Company, &accented), Ok(()));
        let problem =
            check_value(CanonicalField::Company, &format!("{accented}é")).expect_err("one over");
        assert_eq!(problem.field, CanonicalField::Company);
    }

    #[test]
    fn control_characters_are_refused_but_line_breaks_are_text() {
        for c in ['\0', '\u{1b}', '\u{7f}', '\u{85}', '\u{8}'] {
            let problem = check_value(CanonicalField::FirstName, &format!("A{c}B"))
                .expect_err("a control character");
            assert!(problem.reason.contains("U+"), "{problem}");
        }
        assert_eq!(
            check_value(CanonicalField::Company, "Acme\nEurope\tLtd"),
            Ok(())
        );
    }

    #[test]
    fn statuses_are_the_platforms() {
        assert_eq!(check_value(CanonicalField::Status, "qualified"), Ok(()));
        assert!(check_value(CanonicalField::Status, "CONNECTED").is_err());
    }

    proptest! {
        #[test]
        fn a_checked_value_never_holds_nul_or_exceeds_the_limit(value in "\\PC{0,600}|[\\x00-\\x20a-z]{0,40}") {
            if check_value(CanonicalField::JobTitle, &value).is_ok() {
                prop_assert!(!value.contains('\0'));
                prop_assert!(value.trim().chars().count() <= MAX_CHARS);
            }
        }

        #[test]
        fn every_valid_email_has_one_at_and_no_space(value in "[a-z.@ -]{0,12}") {
            if is_valid_email(&value) {
                prop_assert_eq!(value.matches('@').count(), 1);
                prop_assert!(!value.contains(' '));
            }
        }
    }
}
