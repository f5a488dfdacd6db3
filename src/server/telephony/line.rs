//! The agent's side of a call's socket: the write half the call's task and the engine's task
//! share, and the [`LineCutter`] that writes a barge-in's `clear` from the engine's task,
//! straight onto the socket when no send is under way. A barge-in's clear then waits neither
//! for playout nor for the call's task, which at a thousand calls is usually queued behind
//! other tasks to read the caller's next frame. The call's task checks that audio is still
//! current while it holds the socket ([`crate::call::Speech::is_current`]), so nothing
//! written before a clear reaches the carrier after it.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{Sink, SinkExt as _};

use crate::call::{CutNow, CutWritten};

/// The socket's write half, shared by the call's task and the cutter.
pub(super) type Writer<W = SplitSink<WebSocket, Message>> = Arc<tokio::sync::Mutex<W>>;

/// Writes a barge-in's `clear` from the engine's task.
pub(super) struct LineCutter<W = SplitSink<WebSocket, Message>> {
    pub(super) writer: Writer<W>,
    pub(super) clear: Utf8Bytes,
}

impl<W> CutNow for LineCutter<W>
where
    W: Sink<Message> + Unpin + Send,
{
    fn cut_now(&self) -> CutWritten {
        write_now(&self.writer, Message::Text(self.clear.clone()))
    }
}

/// Writes `message` without waiting: only if nobody else is sending and the socket takes it.
fn write_now<W: Sink<Message> + Unpin>(writer: &Writer<W>, message: Message) -> CutWritten {
    let Ok(mut sink) = writer.try_lock() else {
        return CutWritten::NotNow;
    };
    // Nothing waits on these polls: a pending one is left to the call's task, which polls
    // again with its own waker.
    let mut cx = Context::from_waker(Waker::noop());
    if !matches!(sink.poll_ready_unpin(&mut cx), Poll::Ready(Ok(()))) {
        return CutWritten::NotNow;
    }
    if sink.start_send_unpin(message).is_err() {
        return CutWritten::NotNow;
    }
    match sink.poll_flush_unpin(&mut cx) {
        Poll::Ready(Ok(())) => CutWritten::Sent,
        Poll::Ready(Err(_)) | Poll::Pending => CutWritten::Started,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket's write half that keeps what it was given, and can be made to hold off.
    #[derive(Default)]
    struct Socket {
        buffered: Vec<Message>,
        sent: Vec<Message>,
        not_ready: bool,
        stalled: bool,
    }

    impl Sink<Message> for Socket {
        type Error = ();

        fn poll_ready(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            if self.not_ready {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        }

        fn start_send(mut self: std::pin::Pin<&mut Self>, item: Message) -> Result<(), ()> {
            self.buffered.push(item);
            Ok(())
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), ()>> {
            if self.stalled {
                return Poll::Pending;
            }
            let buffered = std::mem::take(&mut self.buffered);
            self.sent.extend(buffered);
            Poll::Ready(Ok(()))
        }

        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), ()>> {
            self.poll_flush(cx)
        }
    }

    const CLEAR: &str = r#"{"event":"clear"}"#;

    fn sent(writer: &Writer<Socket>) -> usize {
        let socket = writer.try_lock().expect("nobody holds the socket");
        assert!(
            socket
                .sent
                .iter()
                .all(|m| *m == Message::Text(CLEAR.into()))
        );
        socket.sent.len()
    }

    #[test]
    fn a_clear_goes_straight_out_when_the_socket_is_free_and_waits_its_turn_otherwise() {
        let writer: Writer<Socket> = Arc::default();
        let cutter = LineCutter {
            writer: writer.clone(),
            clear: CLEAR.into(),
        };
        assert_eq!(cutter.cut_now(), CutWritten::Sent);
        assert_eq!(sent(&writer), 1, "the clear is on the socket");

        // The call's task is sending: the clear waits its turn in the queue.
        let held = writer.try_lock().unwrap();
        assert_eq!(cutter.cut_now(), CutWritten::NotNow);
        drop(held);

        // The socket takes the clear but cannot pass it on yet: the call's task flushes.
        writer.try_lock().unwrap().stalled = true;
        assert_eq!(cutter.cut_now(), CutWritten::Started);
        assert_eq!(sent(&writer), 1);
        writer.try_lock().unwrap().stalled = false;

        // The socket is not ready for another message.
        writer.try_lock().unwrap().not_ready = true;
        assert_eq!(cutter.cut_now(), CutWritten::NotNow);
        assert_eq!(sent(&writer), 1);
    }
}
