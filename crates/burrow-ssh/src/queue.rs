//! A queue of whole messages or packets that knows how many bytes it holds. Every queue a peer
//! can make grow (replies it has not read, packets held during a key exchange, sealed packets
//! waiting for the socket) is one of these, so the driver can hold the connection to one cap.

use std::collections::VecDeque;

/// Messages or packets in order, with their total size.
#[derive(Debug, Default)]
pub struct ByteQueue {
    items: VecDeque<Vec<u8>>,
    bytes: usize,
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
        self.bytes = self.bytes.saturating_add(item.len());
        self.items.push_back(item);
    }

    /// Takes the oldest item.
    pub fn pop_front(&mut self) -> Option<Vec<u8>> {
        let item = self.items.pop_front()?;
        self.bytes = self.bytes.saturating_sub(item.len());
        Some(item)
    }

    /// Bytes held.
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
        assert_eq!((q.len(), q.bytes()), (2, 13));
        assert_eq!(q.pop_front(), Some(vec![1, 2, 3]));
        assert_eq!(q.bytes(), 10);
        q.pop_front();
        assert!(q.is_empty() && q.bytes() == 0 && q.pop_front().is_none());
    }
}
