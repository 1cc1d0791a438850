//! The names of the things a simulated user does. They key the per-action statistics in results
//! files, the weights of the action mix in workload configs and the metric names in thresholds
//! (`create_post.p99<200ms`), so they are defined once here.

use serde::{Deserialize, Serialize};

/// One kind of user action. The serialized name is the stable identifier used everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `POST /users/login` once per user (and after a session is lost).
    Login,
    /// Open the WebSocket and complete the authentication challenge.
    WsConnect,
    /// View another channel: mark it viewed and fetch its recent posts.
    SwitchChannel,
    /// Scroll back: fetch the page of posts before the oldest one seen.
    ReadMore,
    /// Check unread counts of the user's channels in the current team.
    CheckUnreads,
    /// Create a post (a fraction of them replies to a recent post).
    CreatePost,
    /// Add a reaction to a recent post.
    AddReaction,
    /// Send `user_typing` over the WebSocket (before some posts).
    UserTyping,
    /// Set the user's status.
    UpdateStatus,
    /// Drop the WebSocket and reconnect it, resuming with `connection_id` + `sequence_number`.
    WsReconnect,
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::Login,
        Action::WsConnect,
        Action::SwitchChannel,
        Action::ReadMore,
        Action::CheckUnreads,
        Action::CreatePost,
        Action::AddReaction,
        Action::UserTyping,
        Action::UpdateStatus,
        Action::WsReconnect,
    ];

    /// Actions a workload's mix may weight (login and the first connect happen on their own).
    pub const MIXABLE: [Action; 7] = [
        Action::SwitchChannel,
        Action::ReadMore,
        Action::CheckUnreads,
        Action::CreatePost,
        Action::AddReaction,
        Action::UpdateStatus,
        Action::WsReconnect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Login => "login",
            Action::WsConnect => "ws_connect",
            Action::SwitchChannel => "switch_channel",
            Action::ReadMore => "read_more",
            Action::CheckUnreads => "check_unreads",
            Action::CreatePost => "create_post",
            Action::AddReaction => "add_reaction",
            Action::UserTyping => "user_typing",
            Action::UpdateStatus => "update_status",
            Action::WsReconnect => "ws_reconnect",
        }
    }

    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_and_match_serde() {
        for a in Action::ALL {
            assert_eq!(Action::from_name(a.name()), Some(a));
            assert_eq!(
                serde_json::to_string(&a).expect("ser"),
                format!("\"{}\"", a.name())
            );
        }
        assert_eq!(Action::from_name("nope"), None);
    }
}
