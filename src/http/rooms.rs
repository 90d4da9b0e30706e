//! Room state of the signaling endpoint: which connection is in which room, who is the other
//! participant. A plain struct without I/O, clock or tasks (STYLE.md §13); the WebSocket
//! handler in `signaling` asks it what to do and performs the sends itself.
//!
//! Rules: a room holds at most [`ROOM_CAPACITY`] participants; a connection is in at most one
//! room; the newcomer to a room that already has someone is the *initiator* (it sends the
//! offer); a room is removed as soon as its last participant leaves.

use std::collections::HashMap;

/// Participants allowed in one room: a two-party call.
pub const ROOM_CAPACITY: usize = 2;
/// Longest room code accepted.
pub const MAX_ROOM_CODE_LEN: usize = 64;

/// Identifies one WebSocket connection for the lifetime of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A validated room code: 1–64 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoomCode(String);

impl RoomCode {
    /// `None` if `code` is empty, too long or has a character outside `[A-Za-z0-9_-]`.
    pub fn parse(code: &str) -> Option<RoomCode> {
        let ok = !code.is_empty()
            && code.len() <= MAX_ROOM_CODE_LEN
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| RoomCode(code.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// The room already has [`ROOM_CAPACITY`] participants.
    RoomFull,
    /// This connection is already in a room (it must leave first).
    AlreadyJoined,
}

/// The outcome of a successful join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// Participants that were in the room before this one joined.
    pub others: Vec<ConnId>,
    /// True when someone was already there: the newcomer creates the offer.
    pub initiator: bool,
}

/// All rooms and the room of each connection.
#[derive(Debug, Default)]
pub struct Rooms {
    members_by_room: HashMap<RoomCode, Vec<ConnId>>,
    room_by_conn: HashMap<ConnId, RoomCode>,
}

impl Rooms {
    pub fn new() -> Self {
        Self::default()
    }

    /// Put `conn` into `room`, creating the room if needed.
    pub fn join(&mut self, conn: ConnId, room: RoomCode) -> Result<Joined, JoinError> {
        if self.room_by_conn.contains_key(&conn) {
            return Err(JoinError::AlreadyJoined);
        }
        let members = self.members_by_room.entry(room.clone()).or_default();
        if members.len() >= ROOM_CAPACITY {
            return Err(JoinError::RoomFull);
        }
        let others = members.clone();
        members.push(conn);
        self.room_by_conn.insert(conn, room);
        Ok(Joined {
            initiator: !others.is_empty(),
            others,
        })
    }

    /// Take `conn` out of its room; returns the participants still there (to be told
    /// `peer-left`). The room is removed when it becomes empty. Leaving when not in a room
    /// returns nothing.
    pub fn leave(&mut self, conn: ConnId) -> Vec<ConnId> {
        let Some(room) = self.room_by_conn.remove(&conn) else {
            return Vec::new();
        };
        let Some(members) = self.members_by_room.get_mut(&room) else {
            return Vec::new();
        };
        members.retain(|m| *m != conn);
        if members.is_empty() {
            self.members_by_room.remove(&room);
            return Vec::new();
        }
        members.clone()
    }

    /// The room `conn` is in.
    pub fn room_of(&self, conn: ConnId) -> Option<&RoomCode> {
        self.room_by_conn.get(&conn)
    }

    /// The other participants of `conn`'s room (where a relayed message goes). `None` when
    /// `conn` is not in a room.
    pub fn others(&self, conn: ConnId) -> Option<Vec<ConnId>> {
        let room = self.room_by_conn.get(&conn)?;
        let members = self.members_by_room.get(room)?;
        Some(members.iter().copied().filter(|m| *m != conn).collect())
    }

    /// Participants in `room` (0 when it does not exist).
    pub fn occupancy(&self, room: &RoomCode) -> usize {
        self.members_by_room.get(room).map_or(0, Vec::len)
    }

    /// Number of rooms with at least one participant.
    pub fn room_count(&self) -> usize {
        self.members_by_room.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> RoomCode {
        RoomCode::parse(s).unwrap()
    }

    #[test]
    fn room_codes_are_validated() {
        assert!(RoomCode::parse("abc").is_some());
        assert!(RoomCode::parse("A-b_9").is_some());
        assert!(RoomCode::parse(&"x".repeat(64)).is_some());
        assert!(RoomCode::parse(&"x".repeat(65)).is_none());
        assert!(RoomCode::parse("").is_none());
        for bad in ["a b", "a/b", "é", "a.b", "<script>", "a\u{0}"] {
            assert!(RoomCode::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn first_joiner_waits_and_newcomer_initiates() {
        let mut r = Rooms::new();
        let a = r.join(ConnId(1), code("x")).unwrap();
        assert_eq!(
            a,
            Joined {
                others: vec![],
                initiator: false
            }
        );
        let b = r.join(ConnId(2), code("x")).unwrap();
        assert_eq!(
            b,
            Joined {
                others: vec![ConnId(1)],
                initiator: true
            }
        );
        assert_eq!(r.others(ConnId(1)), Some(vec![ConnId(2)]));
        assert_eq!(r.others(ConnId(2)), Some(vec![ConnId(1)]));
    }

    #[test]
    fn a_third_participant_is_refused() {
        let mut r = Rooms::new();
        r.join(ConnId(1), code("x")).unwrap();
        r.join(ConnId(2), code("x")).unwrap();
        assert_eq!(r.join(ConnId(3), code("x")), Err(JoinError::RoomFull));
        assert_eq!(r.room_of(ConnId(3)), None);
        assert_eq!(r.occupancy(&code("x")), 2);
        // Another room is unaffected.
        assert!(r.join(ConnId(3), code("y")).is_ok());
    }

    #[test]
    fn joining_twice_is_refused() {
        let mut r = Rooms::new();
        r.join(ConnId(1), code("x")).unwrap();
        assert_eq!(r.join(ConnId(1), code("y")), Err(JoinError::AlreadyJoined));
        assert_eq!(r.join(ConnId(1), code("x")), Err(JoinError::AlreadyJoined));
        assert_eq!(r.occupancy(&code("x")), 1);
        assert_eq!(r.room_count(), 1);
    }

    #[test]
    fn leaving_notifies_the_other_and_frees_the_seat() {
        let mut r = Rooms::new();
        r.join(ConnId(1), code("x")).unwrap();
        r.join(ConnId(2), code("x")).unwrap();
        assert_eq!(r.leave(ConnId(1)), vec![ConnId(2)]);
        assert_eq!(r.others(ConnId(2)), Some(vec![]));
        assert_eq!(r.others(ConnId(1)), None);
        // The seat is free again and the newcomer initiates.
        let j = r.join(ConnId(3), code("x")).unwrap();
        assert!(j.initiator);
        assert_eq!(j.others, vec![ConnId(2)]);
    }

    #[test]
    fn empty_rooms_are_removed() {
        let mut r = Rooms::new();
        r.join(ConnId(1), code("x")).unwrap();
        r.join(ConnId(2), code("x")).unwrap();
        r.leave(ConnId(2));
        assert_eq!(r.room_count(), 1);
        assert_eq!(r.leave(ConnId(1)), Vec::<ConnId>::new());
        assert_eq!(r.room_count(), 0);
        assert_eq!(r.occupancy(&code("x")), 0);
    }

    #[test]
    fn leaving_without_a_room_is_harmless() {
        let mut r = Rooms::new();
        assert!(r.leave(ConnId(9)).is_empty());
        r.join(ConnId(1), code("x")).unwrap();
        assert!(r.leave(ConnId(1)).is_empty());
        assert!(r.leave(ConnId(1)).is_empty());
        assert_eq!(r.room_count(), 0);
    }

    #[test]
    fn many_rooms_do_not_interfere() {
        let mut r = Rooms::new();
        for i in 0..100u64 {
            r.join(ConnId(i), code(&format!("room{}", i / 2))).unwrap();
        }
        assert_eq!(r.room_count(), 50);
        assert_eq!(r.others(ConnId(10)), Some(vec![ConnId(11)]));
        for i in 0..100u64 {
            r.leave(ConnId(i));
        }
        assert_eq!(r.room_count(), 0);
    }
}
