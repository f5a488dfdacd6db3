//! The agent's side of a call: what playout writes becomes mu-law media and marks on the
//! carrier's socket, and the marks the carrier echoes say how much of it the caller heard.
//!
//! Three tasks share it. Playout writes through [`CarrierSink`]; the call's connection task
//! sends what was queued; and on a barge-in the session's own task sends `clear` through
//! [`CarrierInterrupter`], straight onto the socket when no send is under way. A barge-in's
//! clear then waits neither for playout nor for the connection task, which at a thousand
//! calls is usually queued behind other tasks to read the caller's next frame. Every piece of
//! queued audio carries the [`Cut`] epoch it was written in, and the connection task checks
//! the epoch while it holds the socket, so nothing written before a clear reaches the carrier
//! after it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{Sink, SinkExt as _};
use tokio::sync::mpsc;

use super::resample::ToPhone;
use crate::engine::log::EventLog;
use crate::engine::{AudioSink, Interrupter};
use crate::flux::Encoding;

/// The socket's write half, shared by the connection task and the interrupter.
pub(super) type Writer<W = SplitSink<WebSocket, Message>> = Arc<tokio::sync::Mutex<W>>;

/// The carrier's playback clock, read from the marks it echoes.
#[derive(Debug, Default)]
pub(super) struct MarkClock {
    /// Agent samples (at the voice's rate) the carrier confirmed played or dropped.
    confirmed: u64,
    /// Marks up to here were settled by a clear; their late echoes mean nothing.
    settled: u64,
}

impl MarkClock {
    pub(super) fn echoed(&mut self, name: &str) {
        if let Some(at) = name.strip_prefix("tf-").and_then(|n| n.parse::<u64>().ok())
            && at > self.settled
        {
            self.confirmed = self.confirmed.max(at);
        }
    }

    /// A clear went out ahead of playout's: the carrier echoes every mark it drops, so until
    /// playout has read what was played ([`MarkClock::cleared`]), no echo counts.
    fn frozen(&mut self) {
        self.settled = u64::MAX;
    }

    fn cleared(&mut self, written: u64) {
        self.confirmed = written;
        self.settled = written;
    }

    /// What the caller heard of `written` samples: an echo naming audio never written (a
    /// carrier's mistake, or a forged message) counts for no more than was written.
    fn heard(&self, written: u64) -> u64 {
        self.confirmed.min(written)
    }
}

/// A barge-in's cut, shared by the sink (playout's task), the interrupter (the session's
/// task) and the connection task.
#[derive(Debug, Default)]
pub(super) struct Cut {
    /// Moves on at each interrupt: audio queued in an earlier epoch is never sent.
    epoch: AtomicU64,
    /// An interrupt waits for playout's clear; what playout writes meanwhile belongs to the
    /// response that was cut.
    pending: AtomicBool,
}

impl Cut {
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}

/// What the sink, the interrupter and the connection task of one call share.
pub(super) struct Line {
    clock: Mutex<MarkClock>,
    pub(super) cut: Cut,
    /// The session's log, set once the session starts: a clear is timed from the
    /// StartOfTurn in it.
    pub(super) log: OnceLock<EventLog>,
    metrics: Arc<crate::server::Metrics>,
}

impl Line {
    pub(super) fn new(metrics: Arc<crate::server::Metrics>) -> Self {
        Line {
            clock: Mutex::default(),
            cut: Cut::default(),
            log: OnceLock::new(),
            metrics,
        }
    }

    pub(super) fn clock(&self) -> MutexGuard<'_, MarkClock> {
        self.clock.lock().expect("mark clock")
    }
}

/// What the connection task sends for the sink and the interrupter.
pub(super) enum Out {
    /// Mu-law audio, the running sample count (voice rate) after it, and the epoch it was
    /// written in.
    Audio {
        mulaw: Vec<u8>,
        mark: u64,
        epoch: u64,
    },
    /// A clear to send (the interrupter found the socket busy, or playout cut a response
    /// the listener was not interrupted for).
    Clear,
    /// The interrupter's clear is written but not all of it reached the socket: flush it.
    FlushClear,
}

/// The engine's output on a phone line.
pub(super) struct CarrierSink<W = SplitSink<WebSocket, Message>> {
    queue: mpsc::UnboundedSender<Out>,
    resampler: ToPhone,
    written: u64,
    line: Arc<Line>,
    interrupter: Arc<CarrierInterrupter<W>>,
}

impl<W> CarrierSink<W> {
    /// A sink writing to `queue`, its interrupter writing `clear` to `writer` directly.
    pub(super) fn new(
        queue: mpsc::UnboundedSender<Out>,
        resampler: ToPhone,
        line: Arc<Line>,
        writer: Writer<W>,
        clear: String,
    ) -> Self {
        let interrupter = Arc::new(CarrierInterrupter {
            line: line.clone(),
            writer,
            clear: Utf8Bytes::from(clear),
            queue: queue.clone(),
        });
        CarrierSink {
            queue,
            resampler,
            written: 0,
            line,
            interrupter,
        }
    }
}

impl<W> AudioSink for CarrierSink<W>
where
    W: Sink<Message> + Unpin + Send + 'static,
{
    fn write(&mut self, frame: &[i16]) {
        self.written += frame.len() as u64;
        // The epoch before the flag: an interrupt sets the flag first, so audio of a newer
        // epoch than the one read here is never mistaken for audio after the clear.
        let epoch = self.line.cut.epoch();
        if self.line.cut.pending.load(Ordering::SeqCst) {
            return;
        }
        let phone = self.resampler.process(frame);
        let mulaw = crate::audio::encode(Encoding::Mulaw, &phone);
        let _ = self.queue.send(Out::Audio {
            mulaw,
            mark: self.written,
            epoch,
        });
    }

    fn clear(&mut self) {
        self.line.clock().cleared(self.written);
        self.line.metrics.cuts_decided_by("carrier_marks", 1);
        if !self.line.cut.pending.swap(false, Ordering::SeqCst) {
            self.line.cut.epoch.fetch_add(1, Ordering::SeqCst);
            let _ = self.queue.send(Out::Clear);
        }
    }

    fn played(&self) -> Option<u64> {
        Some(self.line.clock().heard(self.written))
    }

    fn interrupter(&self) -> Option<Arc<dyn Interrupter>> {
        Some(self.interrupter.clone())
    }
}

/// Sends a barge-in's `clear` from the session's task.
pub(super) struct CarrierInterrupter<W> {
    line: Arc<Line>,
    writer: Writer<W>,
    clear: Utf8Bytes,
    queue: mpsc::UnboundedSender<Out>,
}

impl<W> Interrupter for CarrierInterrupter<W>
where
    W: Sink<Message> + Unpin + Send,
{
    fn interrupt(&self) {
        let line = &self.line;
        line.cut.pending.store(true, Ordering::SeqCst);
        line.cut.epoch.fetch_add(1, Ordering::SeqCst);
        line.clock().frozen();
        match write_now(&self.writer, Message::Text(self.clear.clone())) {
            Written::Sent => {
                if let Some(log) = line.log.get() {
                    crate::server::clear_written(&line.metrics, log);
                }
            }
            Written::Buffered => {
                let _ = self.queue.send(Out::FlushClear);
            }
            Written::Busy => {
                let _ = self.queue.send(Out::Clear);
            }
        }
    }
}

/// How far [`write_now`] got.
#[derive(Debug, PartialEq)]
enum Written {
    /// On the socket.
    Sent,
    /// Taken by the writer, whose flush must finish it.
    Buffered,
    /// Not taken: the socket was in use or not ready.
    Busy,
}

/// Writes `message` without waiting: only if nobody else is sending and the socket takes it.
fn write_now<W: Sink<Message> + Unpin>(writer: &Writer<W>, message: Message) -> Written {
    let Ok(mut sink) = writer.try_lock() else {
        return Written::Busy;
    };
    // Nothing waits on these polls: a pending one is left to the connection task, which polls
    // again with its own waker.
    let mut cx = Context::from_waker(Waker::noop());
    if !matches!(sink.poll_ready_unpin(&mut cx), Poll::Ready(Ok(()))) {
        return Written::Busy;
    }
    if sink.start_send_unpin(message).is_err() {
        return Written::Busy;
    }
    match sink.poll_flush_unpin(&mut cx) {
        Poll::Ready(Ok(())) => Written::Sent,
        Poll::Ready(Err(_)) | Poll::Pending => Written::Buffered,
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

    /// What the connection task would be given, newest last.
    fn queued(queue: &mut mpsc::UnboundedReceiver<Out>) -> Vec<String> {
        std::iter::from_fn(|| queue.try_recv().ok())
            .map(|out| match out {
                Out::Audio { mark, epoch, .. } => format!("audio {mark} @{epoch}"),
                Out::Clear => "clear".into(),
                Out::FlushClear => "flush".into(),
            })
            .collect()
    }

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
    fn a_barge_in_clears_at_once_and_nothing_written_before_it_goes_out_after() {
        let frame = [1000i16; 320];
        let (queue, mut outbound) = mpsc::unbounded_channel();
        let line = Arc::new(Line::new(Arc::default()));
        let writer: Writer<Socket> = Arc::default();
        let mut sink = CarrierSink::new(
            queue,
            ToPhone::new(16000).unwrap(),
            line.clone(),
            writer.clone(),
            CLEAR.into(),
        );
        let interrupter = sink.interrupter().expect("a phone line can be cut off");
        for _ in 0..3 {
            sink.write(&frame);
        }
        assert_eq!(
            queued(&mut outbound),
            ["audio 320 @0", "audio 640 @0", "audio 960 @0"]
        );
        line.clock().echoed("tf-320");

        interrupter.interrupt();
        assert_eq!(sent(&writer), 1, "the clear is on the socket");
        assert_eq!(
            line.cut.epoch(),
            1,
            "the audio queued before it is now stale"
        );
        sink.write(&frame);
        assert_eq!(
            queued(&mut outbound),
            Vec::<String>::new(),
            "a frame playout writes before its clear is dropped, and no second clear is asked for"
        );
        // The carrier echoes the marks the clear dropped.
        line.clock().echoed("tf-640");
        line.clock().echoed("tf-960");
        assert_eq!(
            sink.played(),
            Some(320),
            "only what played before the clear"
        );
        sink.clear();
        assert_eq!(queued(&mut outbound), Vec::<String>::new());
        sink.write(&frame);
        assert_eq!(
            queued(&mut outbound),
            ["audio 1600 @1"],
            "the next reply is sent, its marks counted from everything written"
        );

        // The connection task is sending: the clear waits its turn in the queue.
        let held = writer.try_lock().unwrap();
        interrupter.interrupt();
        drop(held);
        sink.clear();
        assert_eq!(queued(&mut outbound), ["clear"]);
        assert_eq!(line.cut.epoch(), 2);

        // The socket takes the clear but cannot pass it on yet: the connection task flushes.
        writer.try_lock().unwrap().stalled = true;
        interrupter.interrupt();
        sink.clear();
        assert_eq!(queued(&mut outbound), ["flush"]);
        writer.try_lock().unwrap().stalled = false;

        // The socket is not ready for another message: the clear is queued.
        writer.try_lock().unwrap().not_ready = true;
        interrupter.interrupt();
        sink.clear();
        assert_eq!(queued(&mut outbound), ["clear"]);
        assert_eq!(sent(&writer), 1);

        // A cut that was no barge-in (the call ends mid-reply): playout's clear asks for one.
        sink.write(&frame);
        sink.clear();
        assert_eq!(queued(&mut outbound), ["audio 1920 @4", "clear"]);
        assert_eq!(line.cut.epoch(), 5);
    }

    #[test]
    fn marks_advance_the_clock_and_a_clear_settles_the_rest() {
        let mut clock = MarkClock::default();
        clock.echoed("tf-640");
        clock.echoed("tf-1280");
        clock.echoed("tf-960");
        assert_eq!(clock.confirmed, 1280, "an echo never moves the clock back");
        clock.cleared(3200);
        clock.echoed("tf-1920");
        clock.echoed("tf-2560");
        assert_eq!(
            clock.confirmed, 3200,
            "echoes of cleared marks mean nothing"
        );
        clock.echoed("tf-3840");
        assert_eq!(clock.confirmed, 3840);
        clock.echoed("somebody-else");
        assert_eq!(clock.confirmed, 3840);
        clock.echoed("tf-18446744073709551615");
        assert_eq!(clock.heard(4480), 4480, "never more than was written");
    }

    #[test]
    fn a_clear_ahead_of_playout_freezes_the_clock_until_playout_reads_it() {
        let mut clock = MarkClock::default();
        clock.echoed("tf-640");
        clock.frozen();
        // The carrier answers a clear by echoing the marks it dropped.
        clock.echoed("tf-1280");
        clock.echoed("tf-1920");
        assert_eq!(clock.heard(1920), 640, "dropped audio was not heard");
        clock.cleared(1920);
        clock.echoed("tf-2560");
        assert_eq!(clock.heard(2560), 2560, "the next reply counts again");
    }
}
