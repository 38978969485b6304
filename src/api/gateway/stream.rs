//! A streamed answer on its way to the client: each upstream chunk is
//! passed on as it arrives (the first byte never held back) and read on the
//! way for the final usage and the delivered text. With durable answers
//! (the default) the stream's end — the `data: [DONE]` event, or the end of
//! the body when the upstream sends none — is held back until the call's
//! record is in the ledger, so a crash (kill -9) never loses the record of
//! an answer the client received whole.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::Stream;

use super::proxy::{finish, Call, Ended};
use super::registry::{InFlight, Upstream};
use super::usage::StreamTally;
use crate::ledger::STATUS_CLIENT_GONE;

/// The server-sent event that ends an OpenAI-compatible stream.
const DONE: &[u8] = b"data: [DONE]";

/// What a streamed call still has to do once it ends.
struct Pending {
    call: Call,
    upstream: Arc<Upstream>,
    _inflight: InFlight,
}

type Closing = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The upstream's stream, forwarded chunk by chunk and read on the way.
pub(super) struct Tallied<S> {
    inner: S,
    tally: StreamTally,
    first: Option<Instant>,
    pending: Option<Pending>,
    /// The call's record being written; the stream's end waits for it.
    closing: Option<Closing>,
    /// The stream's end (`data: [DONE]` and what follows it in its chunk),
    /// sent once `closing` is done.
    held: Option<Bytes>,
    /// The upstream's body has ended.
    done: bool,
}

impl<S> Tallied<S> {
    pub(super) fn new(inner: S, call: Call, upstream: Arc<Upstream>, inflight: InFlight) -> Self {
        Tallied {
            inner,
            tally: StreamTally::default(),
            first: None,
            pending: Some(Pending {
                call,
                upstream,
                _inflight: inflight,
            }),
            closing: None,
            held: None,
            done: false,
        }
    }

    /// The call and how it ended (`status` 200 when the stream ended, 499
    /// when the client went away, 502 when the upstream broke off), once.
    fn ended(&mut self, status: u16) -> Option<(Call, Ended, bool)> {
        let p = self.pending.take()?;
        let tally = std::mem::take(&mut self.tally);
        let ttft_ms = self
            .first
            .map(|f| f.duration_since(p.call.started).as_millis() as i64);
        let ended = Ended {
            upstream: Some(p.upstream),
            status,
            usage: tally.usage,
            text: tally.text,
            ttft_ms,
        };
        let durable = p.call.gw.durable_answers;
        Some((p.call, ended, durable))
    }

    /// Records a call the client did not receive whole (broken off, or
    /// the client went away): queued at once, nobody waits.
    fn end(&mut self, status: u16) {
        if let Some((call, ended, _)) = self.ended(status) {
            tokio::spawn(finish(call, ended, false));
        }
    }

    /// The answer is complete: with durable answers its end waits for the
    /// record (`closing`); otherwise the record is queued just after.
    fn close(&mut self) {
        match self.ended(200) {
            Some((call, ended, true)) => self.closing = Some(Box::pin(finish(call, ended, true))),
            Some((call, ended, false)) => {
                tokio::spawn(finish(call, ended, false));
            }
            None => {}
        }
    }
}

impl<S, E> Stream for Tallied<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(closing) = &mut this.closing {
                if closing.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.closing = None;
                if let Some(end) = this.held.take() {
                    return Poll::Ready(Some(Ok(end)));
                }
            }
            if this.done {
                return Poll::Ready(None);
            }
            return match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    if this.first.is_none() && !bytes.is_empty() {
                        this.first = Some(Instant::now());
                    }
                    this.tally.feed(&bytes);
                    let at = this.pending.as_ref().and_then(|_| find(&bytes, DONE));
                    let Some(at) = at else {
                        return Poll::Ready(Some(Ok(bytes)));
                    };
                    // The answer's end: what comes before it goes now, the
                    // end itself once the record is written.
                    this.close();
                    let head = bytes.slice(..at);
                    let end = bytes.slice(at..);
                    if this.closing.is_some() {
                        this.held = Some(end);
                        if head.is_empty() {
                            continue;
                        }
                        Poll::Ready(Some(Ok(head)))
                    } else {
                        Poll::Ready(Some(Ok(bytes)))
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.end(502);
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => {
                    this.done = true;
                    this.close();
                    continue;
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl<S> Drop for Tallied<S> {
    fn drop(&mut self) {
        // The client went away while the record was being written: the
        // write goes on (the answer was complete but for its end).
        if let Some(closing) = self.closing.take() {
            tokio::spawn(closing);
        }
        self.end(STATUS_CLIENT_GONE);
    }
}

/// Where `needle` starts in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
