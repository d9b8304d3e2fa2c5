//! The event log on PostgreSQL: the envelope every event is stored in, the
//! append with optimistic concurrency, and the readers (one stream, or the
//! whole log in commit-safe order).

pub mod announcer;
pub mod envelope;
pub mod store;

pub use announcer::Announcer;
pub use envelope::{DecodeError, EventMeta, LogPosition, NewEvent, StoredEvent};
pub use store::{
    announce, append, append_many_unannounced, append_unannounced, checkpoint, newest_of_type, only_usage_after,
    read_after, read_event, read_since_transaction, read_stream, read_stream_newest_without_usage,
    read_stream_without_usage, read_streams_without_usage, read_visible_after, save_checkpoint, stream_version,
    stream_versions, AppendError, Binds, NewEventColumns, NewStream, Notice, NEW_EVENT_COLUMNS, NOTIFY_CHANNEL,
    USAGE_EVENT,
};
