//! A queue of whole messages or packets that knows how many bytes it holds. Every queue a peer
//! can make grow (replies it has not read, packets held during a key exchange, sealed packets
//! waiting for the socket) is one of these, so the driver can hold the connection to one cap.

use std::collections::VecDeque;

/// What one queued item costs besides its bytes: its allocation's header and the queue's
/// slot. A flood of one-byte replies costs memory by the item, not only by the byte.
pub const ITEM_OVERHEAD: usize = 64;

/// Messages or packets in order, with what they cost in memory.
#[derive(Debug, Default)]
pub struct ByteQueue {
    items: VecDeque<Vec<u8>>,
    bytes: usize,
}

fn cost(item: &[u8]) -> usize {
    item.len().saturating_add(ITEM_OVERHEAD)
}

impl ByteQueue {
    /// A queue holding `first`.
    pub fn with(first: Vec<u8>) -> ByteQueue {
        let mut q = ByteQueue::default();
        q.push_back(first);
        q
    }

    /// Adds `item` at the back.
    pub fn push_back(&mut self, item: Vec<u8>) {
        self.bytes = self.bytes.saturating_add(cost(&item));
        self.items.push_back(item);
    }

    /// Takes the oldest item.
    pub fn pop_front(&mut self) -> Option<Vec<u8>> {
        let item = self.items.pop_front()?;
        self.bytes = self.bytes.saturating_sub(cost(&item));
        Some(item)
    }

    /// Memory held: the bytes, and [`ITEM_OVERHEAD`] for each item.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Frees the buffer of an empty queue.
    pub fn release_idle(&mut self) {
        crate::session::shrink(&mut self.items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_it_holds() {
        let mut q = ByteQueue::with(vec![1, 2, 3]);
        q.push_back(vec![4; 10]);
        assert_eq!((q.len(), q.bytes()), (2, 13 + 2 * ITEM_OVERHEAD));
        assert_eq!(q.pop_front(), Some(vec![1, 2, 3]));
        assert_eq!(q.bytes(), 10 + ITEM_OVERHEAD);
        q.pop_front();
        assert!(q.is_empty() && q.bytes() == 0 && q.pop_front().is_none());
    }
}
