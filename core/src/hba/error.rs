use thiserror::Error;

/// Errors from reading, validating or editing pg_hba.conf. Messages name the field and the value
/// so an operator can fix the input without reading code.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HbaError {
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Plan(String),
}

impl HbaError {
    pub(crate) fn invalid(
        field: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        HbaError::Invalid {
            field,
            value: value.into(),
            reason: reason.into(),
        }
    }
}
