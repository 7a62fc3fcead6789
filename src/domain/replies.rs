//! Who answers a message: the rules, a model, or the rules first and the
//! model for what they have no rule for.
//!
//! A rule answers inside the store's append, from the history at that
//! moment. A model takes seconds, so it never runs under a lock, inside a
//! transaction or in a group commit: the context is read first, the model
//! is asked, and the answered exchange is appended when it answers. Two
//! messages to one session at once are then both answered from the history
//! before either, and stored in the order their answers come back.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::domain::chatbot::{CONTEXT_EXCHANGES, Catalog, History, Replier, ReplyKind};
use crate::domain::model::{ModelClient, ModelError, Pieces, Turn};
use crate::domain::models::{ConversationEntry, SessionId};
use crate::domain::store::{NewExchange, Numbered, Page, Store, StoreError};

/// Why a message got no stored answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// A reply decided before the append: given to the store as its replier.
struct Given(String);

impl Replier for Given {
    fn reply(&self, _message: &str, _history: &dyn History) -> Arc<str> {
        // A fresh `Arc`: the memory store keeps a reply once for the whole
        // store only when someone else holds it too (a rule's).
        Arc::from(self.0.as_str())
    }
}

/// The rules, counting each reply by where it came from
/// (`chatbot_replies_total{source, rule}`).
struct Counted(Arc<dyn Replier>);

impl Replier for Counted {
    fn reply(&self, message: &str, history: &dyn History) -> Arc<str> {
        let (reply, kind) = self.0.reply_kind(message, history);
        count(&kind);
        reply
    }

    fn known_reply(&self, message: &str, history: &dyn History) -> Option<Arc<str>> {
        self.0.known_reply(message, history)
    }

    fn reply_kind(&self, message: &str, history: &dyn History) -> (Arc<str>, ReplyKind) {
        let (reply, kind) = self.0.reply_kind(message, history);
        count(&kind);
        (reply, kind)
    }

    fn catalog(&self) -> Catalog {
        self.0.catalog()
    }
}

/// A reply's source, and its rule's name when a rule gave it.
type ReplySeries = (&'static str, Option<Arc<str>>);

thread_local! {
    /// Reply counters already registered, by source and rule name (no
    /// allocation and no registry lookup once a rule has been counted here).
    static REPLY_COUNTERS: RefCell<HashMap<ReplySeries, metrics::Counter>> =
        RefCell::new(HashMap::new());
}

/// Counts one reply; the fallback ("questions the bot could not answer")
/// apart from the rules.
fn count(kind: &ReplyKind) {
    let (source, rule): ReplySeries = match kind {
        ReplyKind::Rule(name) => ("rule", Some(name.clone())),
        ReplyKind::Conversation => ("conversation", None),
        ReplyKind::Fallback => ("fallback", None),
        ReplyKind::Other => ("other", None),
    };
    REPLY_COUNTERS.with(|counters| {
        counters
            .borrow_mut()
            .entry((source, rule))
            .or_insert_with_key(|(source, rule)| {
                let rule = rule.as_deref().unwrap_or("").to_owned();
                metrics::counter!("chatbot_replies_total", "source" => *source, "rule" => rule)
            })
            .increment(1);
    });
}

fn count_model() {
    metrics::counter!("chatbot_replies_total", "source" => "model", "rule" => "").increment(1);
}

/// The reply engine as configured.
#[derive(Clone)]
pub struct Replies {
    pub rules: Arc<dyn Replier>,
    pub model: Option<Arc<ModelClient>>,
    /// With a model: a message a rule answers gets the rule's reply.
    pub rules_first: bool,
}

impl Replies {
    /// Rules only.
    pub fn rules(rules: Arc<dyn Replier>) -> Self {
        Self {
            rules: Arc::new(Counted(rules)),
            model: None,
            rules_first: false,
        }
    }

    /// The model this engine asks, when the rules do not answer `message`
    /// given `history`; `None` when the rules do.
    fn model_for(&self, message: &str, history: &dyn History) -> Option<&ModelClient> {
        let model = self.model.as_deref()?;
        if self.rules_first && self.rules.known_reply(message, history).is_some() {
            return None;
        }
        Some(model)
    }

    /// The model to ask about `message` in `session`, and what to send
    /// it (the session's latest exchanges read now); `None` when the rules
    /// answer, inside the store's append.
    async fn model_turns(
        &self,
        store: &dyn Store,
        session: &SessionId,
        message: &str,
    ) -> Result<Option<(&ModelClient, Vec<Turn>)>, StoreError> {
        let Some(model) = self.model.as_deref() else {
            return Ok(None);
        };
        let wanted = model.config().context.max(CONTEXT_EXCHANGES);
        let history = latest(store, session.as_str(), wanted).await?;
        Ok(self
            .model_for(message, &&history[..])
            .map(|model| (model, model.turns(&history, message))))
    }

    /// Answers `exchange` and stores the answered exchange.
    pub async fn answer(
        &self,
        store: &dyn Store,
        session: &SessionId,
        exchange: NewExchange,
    ) -> Result<Numbered, ReplyError> {
        let asked = self
            .model_turns(store, session, &exchange.user_message)
            .await?;
        let Some((model, turns)) = asked else {
            return Ok(store.append(session, exchange, self.rules.clone()).await?);
        };
        let reply = model.complete(&turns).await?;
        count_model();
        Ok(store
            .append(session, exchange, Arc::new(Given(reply)))
            .await?)
    }

    /// The reply to `message` after `history` (given by the client; nothing
    /// is stored): the rules', or the model's.
    pub async fn answer_once(
        &self,
        history: &[ConversationEntry],
        message: &str,
    ) -> Result<Arc<str>, ModelError> {
        match self.model_for(message, &history) {
            None => Ok(self.rules.reply(message, &rules_window(history))),
            Some(model) => {
                let reply = model.complete(&model.turns(history, message)).await?;
                count_model();
                Ok(reply.into())
            }
        }
    }

    /// [`Replies::answer_once`] as pieces of text: the model's as they
    /// arrive, or the rules' reply a word at a time, as a model streams.
    pub async fn stream_once(
        &self,
        history: &[ConversationEntry],
        message: &str,
    ) -> Result<Pieces, ModelError> {
        match self.model_for(message, &history) {
            None => {
                let reply = self.rules.reply(message, &rules_window(history));
                let words: Vec<Result<String, ModelError>> = words(&reply).map(Ok).collect();
                Ok(Box::pin(futures_util::stream::iter(words)))
            }
            Some(model) => {
                let pieces = model.stream(&model.turns(history, message)).await?;
                count_model();
                Ok(pieces)
            }
        }
    }
}

/// What a streamed answer sends, in order: pieces of the reply, then the
/// stored exchange, or a failure (after which nothing is stored).
#[derive(Debug)]
pub enum Streamed {
    Piece(String),
    Stored(Numbered),
    Failed(ReplyError),
}

impl Replies {
    /// [`Replies::answer`], with the reply sent as it is written. A model
    /// that cannot be reached fails here; once it answers, the rest comes
    /// through the receiver. The exchange is stored when the reply is
    /// complete, **whether or not anyone still reads the receiver**: a
    /// client that goes away mid-answer finds the whole answer in the
    /// history. A model that breaks off mid-answer stores nothing.
    pub async fn answer_streaming(
        &self,
        store: Arc<dyn Store>,
        session: SessionId,
        exchange: NewExchange,
    ) -> Result<mpsc::Receiver<Streamed>, ReplyError> {
        let (sender, receiver) = mpsc::channel(64);
        let asked = self
            .model_turns(&*store, &session, &exchange.user_message)
            .await?;
        let Some((model, turns)) = asked else {
            // The rules answer inside the append: store, then send.
            let stored = store.append(&session, exchange, self.rules.clone()).await?;
            tokio::spawn(async move {
                for word in words(&stored.bot_reply) {
                    let _ = sender.send(Streamed::Piece(word)).await;
                }
                let _ = sender.send(Streamed::Stored(stored)).await;
            });
            return Ok(receiver);
        };
        let mut pieces = model.stream(&turns).await?;
        tokio::spawn(async move {
            let mut reply = String::new();
            while let Some(piece) = pieces.next().await {
                match piece {
                    Ok(piece) => {
                        reply.push_str(&piece);
                        // A reader gone is no reason to stop: the answer is stored whole.
                        let _ = sender.send(Streamed::Piece(piece)).await;
                    }
                    Err(err) => {
                        let _ = sender.send(Streamed::Failed(err.into())).await;
                        return;
                    }
                }
            }
            count_model();
            if reply.is_empty() {
                let empty = ModelError::Malformed("the stream had no text".into());
                let _ = sender.send(Streamed::Failed(empty.into())).await;
                return;
            }
            let outcome = match store
                .append(&session, exchange, Arc::new(Given(reply)))
                .await
            {
                Ok(stored) => Streamed::Stored(stored),
                Err(err) => Streamed::Failed(err.into()),
            };
            let _ = sender.send(outcome).await;
        });
        Ok(receiver)
    }
}

/// A reply made at once, a word at a time, as a model streams.
fn words(reply: &str) -> impl Iterator<Item = String> + '_ {
    reply.split_inclusive(' ').map(str::to_owned)
}

/// The exchanges the rules are shown: the latest [`CONTEXT_EXCHANGES`].
fn rules_window(history: &[ConversationEntry]) -> &[ConversationEntry] {
    &history[history.len().saturating_sub(CONTEXT_EXCHANGES)..]
}

/// The session's latest `count` exchanges, oldest first.
async fn latest(
    store: &dyn Store,
    session: &str,
    count: usize,
) -> Result<Vec<ConversationEntry>, StoreError> {
    let Some(summary) = store.summary(session).await? else {
        return Ok(Vec::new());
    };
    let page = Page {
        offset: summary.total_messages.saturating_sub(count),
        limit: Some(count),
    };
    Ok(store
        .history(session, page)
        .await?
        .map(|page| page.entries)
        .unwrap_or_default())
}
