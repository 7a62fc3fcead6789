//! Where exchanges live: the `Store` trait and its backends.

mod memory;

use async_trait::async_trait;

pub use memory::MemoryStore;

use crate::models::{ConversationEntry, SessionId};

/// Why a store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing storage failed or is unreachable; retrying later may work.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// A conversation store. Every backend keeps each session's exchanges in the
/// order they were appended.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Up to `n` of the session's latest exchanges, oldest first.
    async fn recent(
        &self,
        session: &SessionId,
        n: usize,
    ) -> Result<Vec<ConversationEntry>, StoreError>;

    /// Appends one exchange to the session, creating the session if needed.
    async fn append(
        &self,
        session: &SessionId,
        entry: ConversationEntry,
    ) -> Result<ConversationEntry, StoreError>;

    /// The session's whole history, oldest first, or `None` when it has none.
    async fn history(&self, session: &str) -> Result<Option<Vec<ConversationEntry>>, StoreError>;
}
