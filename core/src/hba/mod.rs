//! pg_hba.conf: a loss-less model of the file, validation of rules, and the edit planner.
//!
//! The file is kept as a list of records that remember their exact bytes, so rendering an
//! untouched file gives it back byte for byte and an edit changes only the lines it names.
//! PostgreSQL evaluates rules top to bottom and uses the first match, so never reordering what we
//! did not touch is a correctness property, not a cosmetic one.

mod address;
mod edit;
mod error;
mod file;
mod rule;
mod shadow;
mod token;

pub use address::Address;
pub use edit::{Change, Position, RuleAction, RuleOutcome, Selector};
pub use error::HbaError;
pub use file::{classify, HbaFile, LineKind, MAX_FILE};
pub use rule::{parse_names, ConnType, Rule, ServerVersion};
pub use shadow::covers;
pub use token::{tokenize, Token, Tokenized};
