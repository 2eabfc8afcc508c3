//! A member's role and state, typed. On the wire (member records in etcd, `/status`,
//! `/cluster`, `pgshift status --json`) they are the same lower-case strings as ever, so
//! agents of different versions and every tool reading the records keep understanding each
//! other; a state this version does not know is kept as it was written (`Other`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a member's PostgreSQL is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Role {
    Primary,
    Replica,
    #[default]
    Stopped,
    /// Written by another version.
    Other(String),
}

/// What a member's agent is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum NodeState {
    #[default]
    Starting,
    Running,
    /// A standby streaming from its upstream.
    Streaming,
    /// A running standby whose WAL receiver does not stream (the reason is a warning).
    NotStreaming,
    Stopped,
    Promoting,
    Fenced,
    HandingOver,
    /// A rejoin is under way: the server stopped, the leader checked.
    Rejoining,
    /// pg_rewind runs.
    Rewinding,
    /// A base backup replaces the data directory.
    Rebuilding,
    /// Written by another version.
    Other(String),
}

impl Role {
    pub fn as_str(&self) -> &str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Stopped => "stopped",
            Role::Other(s) => s,
        }
    }
}

impl NodeState {
    pub fn as_str(&self) -> &str {
        match self {
            NodeState::Starting => "starting",
            NodeState::Running => "running",
            NodeState::Streaming => "streaming",
            NodeState::NotStreaming => "not streaming",
            NodeState::Stopped => "stopped",
            NodeState::Promoting => "promoting",
            NodeState::Fenced => "fenced",
            NodeState::HandingOver => "handing over",
            NodeState::Rejoining => "rejoining",
            NodeState::Rewinding => "rewinding",
            NodeState::Rebuilding => "rebuilding",
            NodeState::Other(s) => s,
        }
    }

    /// A long operation (rejoin, rewind, rebuild) is under way.
    pub fn is_rejoin(&self) -> bool {
        matches!(
            self,
            NodeState::Rejoining | NodeState::Rewinding | NodeState::Rebuilding
        )
    }
}

impl From<String> for Role {
    fn from(s: String) -> Role {
        match s.as_str() {
            "primary" => Role::Primary,
            "replica" => Role::Replica,
            "stopped" => Role::Stopped,
            _ => Role::Other(s),
        }
    }
}

impl From<String> for NodeState {
    fn from(s: String) -> NodeState {
        let known = [
            NodeState::Starting,
            NodeState::Running,
            NodeState::Streaming,
            NodeState::NotStreaming,
            NodeState::Stopped,
            NodeState::Promoting,
            NodeState::Fenced,
            NodeState::HandingOver,
            NodeState::Rejoining,
            NodeState::Rewinding,
            NodeState::Rebuilding,
        ];
        known
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or(NodeState::Other(s))
    }
}

impl From<Role> for String {
    fn from(r: Role) -> String {
        r.as_str().to_string()
    }
}

impl From<NodeState> for String {
    fn from(s: NodeState) -> String {
        s.as_str().to_string()
    }
}

impl From<&str> for Role {
    fn from(s: &str) -> Role {
        Role::from(s.to_string())
    }
}

impl From<&str> for NodeState {
    fn from(s: &str) -> NodeState {
        NodeState::from(s.to_string())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Code written against the strings (`m.role == "primary"`) reads the same on the enum.
impl PartialEq<&str> for Role {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<&str> for NodeState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_is_the_strings_of_before() {
        let cases = [
            (NodeState::Running, "running"),
            (NodeState::Streaming, "streaming"),
            (NodeState::NotStreaming, "not streaming"),
            (NodeState::HandingOver, "handing over"),
            (NodeState::Rewinding, "rewinding"),
            (NodeState::Rejoining, "rejoining"),
            (NodeState::Rebuilding, "rebuilding"),
            (NodeState::Fenced, "fenced"),
        ];
        for (state, wire) in cases {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{wire}\""));
            assert_eq!(serde_json::from_str::<NodeState>(&json).unwrap(), state);
        }
        for (role, wire) in [
            (Role::Primary, "primary"),
            (Role::Replica, "replica"),
            (Role::Stopped, "stopped"),
        ] {
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{wire}\""));
            assert_eq!(Role::from(wire), role);
            assert!(role == wire);
        }
    }

    #[test]
    fn states_of_other_versions_are_kept_as_written() {
        let s: NodeState = serde_json::from_str("\"defragmenting\"").unwrap();
        assert_eq!(s, NodeState::Other("defragmenting".into()));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"defragmenting\"");
        let r: Role = serde_json::from_str("\"witness\"").unwrap();
        assert_eq!(r.to_string(), "witness");
    }
}
