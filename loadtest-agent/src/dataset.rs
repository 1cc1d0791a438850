//! The data set's layout, computed rather than stored: user, team and channel names and which
//! channels each user belongs to follow from the config alone, so `setup` and every agent agree
//! without asking the server (agents only resolve names to ids, once, lazily).
//!
//! - User `i` (0-based) is `{user_prefix}-{i}` and belongs to team `i % teams`.
//! - Team `t` is `{team_prefix}-{t}`.
//! - In each team, group `g`'s channel `c` is `{team_prefix}-{t}-g{g}-c{c}`; its members are a
//!   window of `members` consecutive team users (wrapping), the windows of a group spread evenly
//!   over the team so that channel sizes are exact and every user is in about the same number
//!   of channels.

use loadtest_contract::workload::{ChannelGroup, DatasetConfig};

/// One channel of the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    pub team: u32,
    pub group: u32,
    pub index: u32,
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub teams: u32,
    pub users: u64,
    pub team_prefix: String,
    pub user_prefix: String,
    pub groups: Vec<ChannelGroup>,
}

impl Layout {
    pub fn new(d: &DatasetConfig) -> Self {
        Self {
            teams: d.teams.max(1),
            users: d.users,
            team_prefix: d.team_prefix.clone(),
            user_prefix: d.user_prefix.clone(),
            groups: d.channels.clone(),
        }
    }

    pub fn username(&self, user: u64) -> String {
        format!("{}-{user}", self.user_prefix)
    }

    pub fn team_name(&self, team: u32) -> String {
        format!("{}-{team}", self.team_prefix)
    }

    pub fn channel_name(&self, c: ChannelKey) -> String {
        format!("{}-{}-g{}-c{}", self.team_prefix, c.team, c.group, c.index)
    }

    pub fn is_private(&self, c: ChannelKey) -> bool {
        self.groups.get(c.group as usize).is_some_and(|g| g.private)
    }

    pub fn team_of(&self, user: u64) -> u32 {
        (user % u64::from(self.teams)) as u32
    }

    /// Users in team `t`: those with `i % teams == t`.
    pub fn team_size(&self, team: u32) -> u64 {
        let t = u64::from(team);
        let n = u64::from(self.teams);
        if t >= self.users {
            0
        } else {
            (self.users - t).div_ceil(n)
        }
    }

    /// Global index of the team's `j`-th user.
    pub fn team_user(&self, team: u32, j: u64) -> u64 {
        j * u64::from(self.teams) + u64::from(team)
    }

    /// Every channel of the data set.
    pub fn channels(&self) -> impl Iterator<Item = ChannelKey> + '_ {
        (0..self.teams).flat_map(move |team| {
            self.groups.iter().enumerate().flat_map(move |(g, grp)| {
                (0..grp.count).map(move |index| ChannelKey {
                    team,
                    group: g as u32,
                    index,
                })
            })
        })
    }

    /// First team-local member and member count of a channel.
    fn window(&self, c: ChannelKey) -> (u64, u64) {
        let n = self.team_size(c.team);
        let Some(g) = self.groups.get(c.group as usize) else {
            return (0, 0);
        };
        if n == 0 {
            return (0, 0);
        }
        let m = g.members.min(n);
        // Evenly spaced windows; groups shifted against each other so their windows differ.
        let start =
            (u64::from(c.index) * n / u64::from(g.count.max(1)) + u64::from(c.group) * 7) % n;
        (start, m)
    }

    /// Global indexes of a channel's members.
    pub fn members(&self, c: ChannelKey) -> impl Iterator<Item = u64> + '_ {
        let (start, m) = self.window(c);
        let n = self.team_size(c.team);
        (0..m).map(move |k| self.team_user(c.team, (start + k) % n))
    }

    /// The channels user `user` belongs to, in layout order.
    pub fn channels_of(&self, user: u64) -> Vec<ChannelKey> {
        let team = self.team_of(user);
        let n = self.team_size(team);
        let j = user / u64::from(self.teams);
        let mut out = Vec::new();
        for (g, grp) in self.groups.iter().enumerate() {
            for index in 0..grp.count {
                let c = ChannelKey {
                    team,
                    group: g as u32,
                    index,
                };
                let (start, m) = self.window(c);
                if n > 0 && (j + n - start) % n < m {
                    out.push(c);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(teams: u32, users: u64, groups: &[(u32, u64)]) -> Layout {
        Layout {
            teams,
            users,
            team_prefix: "t".into(),
            user_prefix: "u".into(),
            groups: groups
                .iter()
                .map(|&(count, members)| ChannelGroup {
                    count,
                    members,
                    private: false,
                })
                .collect(),
        }
    }

    #[test]
    fn membership_is_consistent_both_ways_and_sizes_are_exact() {
        let l = layout(3, 100, &[(5, 10), (2, 34), (1, 1)]);
        assert_eq!((0..3).map(|t| l.team_size(t)).sum::<u64>(), 100);
        for c in l.channels() {
            let members: Vec<u64> = l.members(c).collect();
            let want = l.groups[c.group as usize].members.min(l.team_size(c.team));
            assert_eq!(members.len() as u64, want, "{c:?}");
            for u in &members {
                assert_eq!(l.team_of(*u), c.team);
                assert!(l.channels_of(*u).contains(&c), "{u} in {c:?}");
            }
        }
        for u in 0..100 {
            for c in l.channels_of(u) {
                assert!(l.members(c).any(|m| m == u));
            }
        }
    }

    #[test]
    fn names_are_deterministic() {
        let l = layout(2, 10, &[(1, 5)]);
        assert_eq!(l.username(7), "u-7");
        assert_eq!(l.team_name(1), "t-1");
        let c = ChannelKey {
            team: 1,
            group: 0,
            index: 0,
        };
        assert_eq!(l.channel_name(c), "t-1-g0-c0");
    }
}
