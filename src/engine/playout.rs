//! Playout: writes response audio to the output in real time, 20 ms at a time, and knows how
//! much of each sentence was heard.
//!
//! One task per session owns the [`AudioSink`]. Commands (audio, pause, resume, clear) are
//! handled before the next frame is due (`biased` select), so a clear stops the output within
//! one frame: no frame of a cleared response is written after the clear is received.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::log::{EventLog, LogKind};
use super::turn::ResponseId;
use crate::error::BackendError;
use crate::tts::{SpeechCut, WordTiming};

/// Where agent audio goes: a speaker, a file, a browser or a phone line.
///
/// Playout calls [`AudioSink::write`] once per 20 ms frame, in real time. A listener that
/// buffers audio downstream (a browser's jitter buffer, a carrier) plays it later than it was
/// written; such a sink drops what it buffered on [`AudioSink::clear`] and reports through
/// [`AudioSink::played`] how much the listener has actually played, so the history keeps what
/// was heard rather than what was written.
pub trait AudioSink: Send {
    /// Writes one frame of 16-bit mono PCM, now.
    fn write(&mut self, frame: &[i16]);

    /// The response being written was cut: whatever the listener has buffered but not yet
    /// played must not be played. Called right after [`AudioSink::played`] was read for the
    /// heard text.
    fn clear(&mut self) {}

    /// Samples of everything written so far that the listener has played (a running count
    /// over the whole session), or `None` when what was written is what was heard.
    fn played(&self) -> Option<u64> {
        None
    }

    /// A handle that cuts the listener off from the session's own task, taken once when the
    /// session starts. `None` (the default) leaves every cut to [`AudioSink::clear`].
    fn interrupter(&self) -> Option<Arc<dyn Interrupter>> {
        None
    }
}

/// Cuts a listener off the moment the session decides a barge-in, without waiting for the
/// playout task to run.
///
/// A sink whose output another task drains (a socket that a connection task writes) hands one
/// out through [`AudioSink::interrupter`]: on a barge-in the session calls
/// [`Interrupter::interrupt`] first, then has playout clear the response as usual. Playout
/// calls [`AudioSink::clear`] even when the response had not started or had just finished,
/// so every interrupt is followed by a clear.
pub trait Interrupter: Send + Sync {
    /// Stops the listener hearing the agent, now: drops what the listener buffered, and
    /// everything written from now until the next [`AudioSink::clear`] (playout may write a
    /// frame of the cut response before its clear). Called from the session's task; must not
    /// block.
    fn interrupt(&self);
}

/// Commands to the playout task.
#[derive(Debug)]
pub(crate) enum PlayoutCommand {
    /// A sentence of a response begins; its audio follows.
    Sentence {
        /// The response.
        id: ResponseId,
        /// The sentence text.
        text: String,
    },
    /// Audio of the current sentence of a response.
    Audio {
        /// The response.
        id: ResponseId,
        /// PCM samples.
        samples: Vec<i16>,
        /// Word timings starting in this chunk (sentence-relative samples).
        words: Vec<WordTiming>,
    },
    /// No more audio will come for this response.
    End {
        /// The response.
        id: ResponseId,
        /// A backend failure, if the response ended because of one.
        failure: Option<BackendError>,
    },
    /// Stop writing this response's audio until resumed.
    Pause(ResponseId),
    /// Continue writing this response's audio.
    Resume(ResponseId),
    /// Drop everything of this response; reply with the text heard.
    Clear {
        /// The response.
        id: ResponseId,
        /// The sink's [`Interrupter`] cut the listener off already: the sink is cleared
        /// whether or not the response started.
        interrupted: bool,
        /// Receives the heard text.
        reply: oneshot::Sender<Heard>,
    },
}

/// What the user heard of a response.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Heard {
    /// The heard text.
    pub heard: String,
    /// The whole text queued for speech so far.
    pub generated: String,
    /// The response had already played to its end (a clear that raced its finish).
    pub complete: bool,
    /// What was heard of its last sentence, for the voice.
    pub cut: SpeechCut,
}

/// Reports from playout to the session.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PlayoutEvent {
    /// The first frame of a response was written.
    Started(ResponseId),
    /// The first frame of a sentence was written.
    Sentence {
        /// The response.
        id: ResponseId,
        /// The sentence.
        text: String,
    },
    /// Everything of a response was played.
    Finished {
        /// The response.
        id: ResponseId,
        /// Heard (= generated) text.
        heard: Heard,
        /// The failure that ended it early, if any.
        failure: Option<BackendError>,
    },
}

#[derive(Debug, Default)]
struct Sentence {
    text: String,
    words: Vec<WordTiming>,
    received: u64,
    played: u64,
}

#[derive(Debug, Default)]
struct Track {
    queue: VecDeque<i16>,
    sentences: Vec<Sentence>,
    /// Sample boundaries: which sentence each queued sample belongs to.
    pending_sentence_starts: VecDeque<(u64, usize)>,
    received: u64,
    played: u64,
    paused: bool,
    started: bool,
    last_written: Option<Instant>,
    ended: Option<Option<BackendError>>,
}

impl Track {
    fn last_written_at(&self) -> Instant {
        self.last_written
            .expect("a started track has written a frame")
    }

    fn sentence_of_sample(&self, sample: u64) -> usize {
        self.pending_sentence_starts
            .iter()
            .take_while(|(start, _)| *start <= sample)
            .last()
            .map_or(0, |(_, i)| *i)
    }

    /// What was heard, the last `unplayed` samples written excepted (still buffered by the
    /// listener when the response was cut). A sentence still arriving is read at the voice's
    /// measured `rate`: its audio so far is not the whole sentence.
    fn heard(&self, unplayed: u64, rate: SpeakingRate) -> Heard {
        let mut heard = Vec::new();
        let mut unheard = unplayed;
        let played: Vec<u64> = self
            .sentences
            .iter()
            .rev()
            .map(|s| {
                let cut = unheard.min(s.played);
                unheard -= cut;
                s.played - cut
            })
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let last = self.sentences.len().saturating_sub(1);
        let mut cut = SpeechCut::default();
        let mut cut_short = false;
        for (index, (s, &played)) in self.sentences.iter().zip(&played).enumerate() {
            let arriving = index == last && self.ended.is_none();
            let text = if cut_short || played == 0 {
                String::new()
            } else if s.received > 0 && played >= s.received && !arriving {
                s.text.clone()
            } else {
                partial(s, played, arriving.then_some(rate))
            };
            cut_short = cut_short || text.len() != s.text.len();
            if index == last {
                cut = SpeechCut {
                    sentence: Some(s.text.clone()),
                    played,
                    heard: text.clone(),
                };
            }
            heard.push(text);
        }
        Heard {
            heard: heard
                .into_iter()
                .filter(|h| !h.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
            generated: self
                .sentences
                .iter()
                .map(|s| s.text.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            complete: false,
            cut,
        }
    }
}

/// A voice's speaking rate, in characters per sample, measured on the sentences it finished
/// without word timings: how far into a sentence still arriving the listener got.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct SpeakingRate {
    chars: u64,
    samples: u64,
}

impl SpeakingRate {
    fn learn(&mut self, sentence: &Sentence) {
        if sentence.words.is_empty() && sentence.received > 0 {
            self.chars += sentence.text.chars().count() as u64;
            self.samples += sentence.received;
        }
    }
}

/// The words of a partly played sentence that were heard: by word timings when the TTS gave
/// them (a word counts once its audio ended), else by characters: at the voice's measured
/// `rate` while the sentence is still arriving, in proportion to its audio once it is whole.
fn partial(s: &Sentence, played: u64, rate: Option<SpeakingRate>) -> String {
    if !s.words.is_empty() {
        return s
            .words
            .iter()
            .take_while(|w| w.end <= played)
            .map(|w| w.word.as_str())
            .collect::<Vec<_>>()
            .join(" ");
    }
    let length = s.text.chars().count() as u64;
    let chars = match rate.filter(|r| r.samples > 0) {
        Some(rate) => (u128::from(played) * u128::from(rate.chars) / u128::from(rate.samples))
            .min(u128::from(length)) as u64,
        None => length * played / s.received.max(1),
    };
    let prefix: String = s.text.chars().take(chars as usize).collect();
    let complete_words = if s
        .text
        .chars()
        .nth(chars as usize)
        .is_none_or(char::is_whitespace)
    {
        prefix.as_str()
    } else {
        prefix
            .rsplit_once(char::is_whitespace)
            .map_or("", |(head, _)| head)
    };
    complete_words.trim().to_owned()
}

/// The length of one output frame.
const FRAME: Duration = Duration::from_millis(20);

/// How many cleared response ids playout remembers to ignore their late commands.
const CLEARED_KEPT: usize = 32;

/// Runs playout until `cancel` fires or every command sender is gone. `written` counts the
/// samples written to the sink so far, so producers can stay about a second ahead instead of
/// buffering whole replies.
pub(crate) async fn run_playout(
    mut sink: Box<dyn AudioSink>,
    sample_rate: u32,
    mut commands: mpsc::Receiver<PlayoutCommand>,
    events: mpsc::UnboundedSender<PlayoutEvent>,
    written: watch::Sender<u64>,
    log: EventLog,
    cancel: CancellationToken,
) {
    let frame_len = (sample_rate / 50) as usize;
    let mut tracks: HashMap<ResponseId, Track> = HashMap::new();
    // Commands of a cleared response can still arrive (sent just before its task saw the
    // cancellation); they must not resurrect it, or its unfinished track would block playout.
    // A late command comes from a response cancelled moments ago, so the most recent few are
    // enough; a long session must not keep every id it cleared.
    let mut cleared: VecDeque<ResponseId> = VecDeque::with_capacity(CLEARED_KEPT);
    // A clear can race a response's natural end; the last few finished responses answer it.
    let mut finished: VecDeque<(ResponseId, Heard)> = VecDeque::new();
    let mut rate = SpeakingRate::default();
    let mut order: VecDeque<ResponseId> = VecDeque::new();
    let mut tick = tokio::time::interval(FRAME);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut frame = vec![0i16; frame_len];
    let mut total_written: u64 = 0;
    // Everything handed to the sink, padding of a response's last frame included: the count
    // the sink's `played` is measured against.
    let mut sink_samples: u64 = 0;
    // Whether the tick is running: only while the front response has something to play.
    let mut ticking = false;
    let mut cancelled = std::pin::pin!(cancel.cancelled());
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => return,
            command = commands.recv() => {
                let Some(command) = command else { return };
                let stale = match &command {
                    PlayoutCommand::Sentence { id, .. }
                    | PlayoutCommand::Audio { id, .. }
                    | PlayoutCommand::End { id, .. } => cleared.contains(id),
                    _ => false,
                };
                if stale {
                    continue;
                }
                match command {
                    PlayoutCommand::Sentence { id, text } => {
                        let track = tracks.entry(id).or_default();
                        if !order.contains(&id) {
                            order.push_back(id);
                        }
                        let index = track.sentences.len();
                        if let Some(finished) = track.sentences.last() {
                            rate.learn(finished);
                        }
                        track.pending_sentence_starts.push_back((track.received, index));
                        track.sentences.push(Sentence { text, ..Sentence::default() });
                    }
                    PlayoutCommand::Audio { id, samples, words } => {
                        let Some(track) = tracks.get_mut(&id) else { continue };
                        if let Some(s) = track.sentences.last_mut() {
                            s.words.extend(words);
                            s.received += samples.len() as u64;
                        }
                        track.received += samples.len() as u64;
                        // Exact growth: delivery keeps a track about a second ahead, and
                        // doubling rounds that second (31 KiB at 16 kHz) up to 64 KiB.
                        track.queue.reserve_exact(samples.len());
                        track.queue.extend(samples);
                    }
                    PlayoutCommand::End { id, failure } => {
                        let track = tracks.entry(id).or_default();
                        if let Some(finished) = track.sentences.last().filter(|_| failure.is_none()) {
                            rate.learn(finished);
                        }
                        track.ended = Some(failure);
                        if !order.contains(&id) {
                            order.push_back(id);
                        }
                    }
                    PlayoutCommand::Pause(id) => {
                        if let Some(t) = tracks.get_mut(&id) {
                            t.paused = true;
                            log.record(LogKind::Paused { id });
                        }
                    }
                    PlayoutCommand::Resume(id) => {
                        if let Some(t) = tracks.get_mut(&id) {
                            t.paused = false;
                            log.record(LogKind::Resumed { id });
                        }
                    }
                    PlayoutCommand::Clear { id, interrupted, reply } => {
                        if cleared.len() == CLEARED_KEPT {
                            cleared.pop_front();
                        }
                        cleared.push_back(id);
                        order.retain(|o| *o != id);
                        let heard = match tracks.remove(&id) {
                            Some(t) => {
                                let mut unplayed = 0;
                                if t.started {
                                    log.record_at(t.last_written_at(), LogKind::LastFrameWritten { id });
                                }
                                if t.started || interrupted {
                                    // What was played is read before the listener is told to
                                    // drop the rest (a carrier's clear settles its marks).
                                    unplayed = sink
                                        .played()
                                        .map_or(0, |played| sink_samples.saturating_sub(played));
                                    sink.clear();
                                }
                                t.heard(unplayed, rate)
                            }
                            None => {
                                if interrupted {
                                    sink.clear();
                                }
                                finished
                                    .iter()
                                    .find(|(f, _)| *f == id)
                                    .map(|(_, h)| h.clone())
                                    .unwrap_or_default()
                            }
                        };
                        let _ = reply.send(heard);
                    }
                }
            }
            _ = tick.tick(), if has_work(&tracks, &order) => {
                let played = play_next(&mut tracks, &mut order, &mut finished, &mut *sink, &mut frame, &events, &log);
                total_written += played;
                if played > 0 {
                    sink_samples += frame_len as u64;
                }
            }
        }
        // A response that just got its first audio starts now, not at the next tick; one
        // whose audio ran dry (the tick sleeps while there is nothing to play) goes on one
        // frame after its last, or now if that is past. The 20 ms cadence runs from there.
        let idle_before = !ticking;
        ticking = has_work(&tracks, &order);
        if let Some(track) = order.front().and_then(|id| tracks.get(id))
            && (!track.started || idle_before)
            && !track.paused
            && !track.queue.is_empty()
        {
            let due = track.last_written.map(|at| at + FRAME);
            if let Some(due) = due.filter(|due| *due > Instant::now()) {
                tick.reset_at(due);
                let total = total_written;
                written.send_if_modified(|w| std::mem::replace(w, total) != total);
                continue;
            }
            let played = play_next(
                &mut tracks,
                &mut order,
                &mut finished,
                &mut *sink,
                &mut frame,
                &events,
                &log,
            );
            total_written += played;
            if played > 0 {
                sink_samples += frame_len as u64;
            }
            tick.reset();
        }
        let total = total_written;
        written.send_if_modified(|w| std::mem::replace(w, total) != total);
    }
}

/// Whether the front response has a frame to write or an end to report: the 20 ms tick runs
/// only then, so a session costs no wakeups while the agent is silent.
fn has_work(tracks: &HashMap<ResponseId, Track>, order: &VecDeque<ResponseId>) -> bool {
    order
        .front()
        .and_then(|id| tracks.get(id))
        .is_some_and(|t| !t.paused && (!t.queue.is_empty() || t.ended.is_some()))
}

/// Writes the next frame of the front response, or reports it finished when it has drained.
/// Returns the samples of the response written (0 when nothing was).
fn play_next(
    tracks: &mut HashMap<ResponseId, Track>,
    order: &mut VecDeque<ResponseId>,
    finished: &mut VecDeque<(ResponseId, Heard)>,
    sink: &mut dyn AudioSink,
    frame: &mut [i16],
    events: &mpsc::UnboundedSender<PlayoutEvent>,
    log: &EventLog,
) -> u64 {
    let Some(&id) = order.front() else { return 0 };
    let track = tracks.get_mut(&id).expect("ordered tracks exist");
    if track.paused {
        return 0;
    }
    if track.queue.is_empty() {
        if let Some(failure) = track.ended.clone() {
            order.pop_front();
            let track = tracks.remove(&id).expect("track exists");
            if track.started {
                log.record_at(track.last_written_at(), LogKind::LastFrameWritten { id });
            }
            let mut heard = track.heard(0, SpeakingRate::default());
            heard.complete = true;
            finished.push_back((id, heard.clone()));
            if finished.len() > 8 {
                finished.pop_front();
            }
            let _ = events.send(PlayoutEvent::Finished { id, heard, failure });
        }
        return 0;
    }
    let n = frame.len().min(track.queue.len());
    let (front, back) = track.queue.as_slices();
    let from_front = n.min(front.len());
    frame[..from_front].copy_from_slice(&front[..from_front]);
    frame[from_front..n].copy_from_slice(&back[..n - from_front]);
    track.queue.drain(..n);
    frame[n..].fill(0);
    sink.write(frame);
    let now = Instant::now();
    let first_sample = track.played;
    track.played += n as u64;
    track.last_written = Some(now);
    if !track.started {
        track.started = true;
        log.record_at(now, LogKind::FirstFrameWritten { id });
        let _ = events.send(PlayoutEvent::Started(id));
    }
    // Credit the played samples to their sentences.
    let mut sample = first_sample;
    while sample < track.played {
        let index = track.sentence_of_sample(sample);
        let end = track
            .pending_sentence_starts
            .iter()
            .find(|(start, _)| *start > sample)
            .map_or(track.played, |(start, _)| (*start).min(track.played));
        let sentence = &mut track.sentences[index];
        if sentence.played == 0 {
            let _ = events.send(PlayoutEvent::Sentence {
                id,
                text: sentence.text.clone(),
            });
        }
        sentence.played += end - sample;
        sample = end;
    }
    n as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Playout running on `sink` at 16 kHz: its commands, its events, its stop and its task.
    fn spawn_playout(
        sink: impl AudioSink + 'static,
    ) -> (
        mpsc::Sender<PlayoutCommand>,
        mpsc::UnboundedReceiver<PlayoutEvent>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::channel(16);
        let (events_tx, events) = mpsc::unbounded_channel();
        let (written, _) = watch::channel(0);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_playout(
            Box::new(sink),
            16000,
            rx,
            events_tx,
            written,
            EventLog::default(),
            cancel.clone(),
        ));
        (tx, events, cancel, task)
    }

    /// Has playout clear response `id` (`interrupted`: the sink's interrupter cut the listener
    /// off first) and returns what was heard of it.
    async fn clear(tx: &mpsc::Sender<PlayoutCommand>, id: ResponseId, interrupted: bool) -> Heard {
        let (reply, heard) = oneshot::channel();
        tx.send(PlayoutCommand::Clear {
            id,
            interrupted,
            reply,
        })
        .await
        .unwrap();
        heard.await.unwrap()
    }

    struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl AudioSink for Count {
        fn write(&mut self, _frame: &[i16]) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn late_commands_of_a_cleared_response_do_not_block_the_next_one() {
        let frames = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, mut events, cancel, task) = spawn_playout(Count(frames.clone()));
        let (old, new) = (ResponseId(1), ResponseId(2));
        assert_eq!(clear(&tx, old, false).await, Heard::default());
        // What the cancelled response's task managed to send after the clear.
        tx.send(PlayoutCommand::Sentence {
            id: old,
            text: "stale".into(),
        })
        .await
        .unwrap();
        tx.send(PlayoutCommand::Audio {
            id: old,
            samples: vec![1; 3200],
            words: vec![],
        })
        .await
        .unwrap();
        // The next response.
        tx.send(PlayoutCommand::Sentence {
            id: new,
            text: "Hello.".into(),
        })
        .await
        .unwrap();
        tx.send(PlayoutCommand::Audio {
            id: new,
            samples: vec![1; 640],
            words: vec![],
        })
        .await
        .unwrap();
        tx.send(PlayoutCommand::End {
            id: new,
            failure: None,
        })
        .await
        .unwrap();
        assert_eq!(events.recv().await, Some(PlayoutEvent::Started(new)));
        assert_eq!(
            events.recv().await,
            Some(PlayoutEvent::Sentence {
                id: new,
                text: "Hello.".into()
            })
        );
        let Some(PlayoutEvent::Finished {
            id,
            heard,
            failure: None,
        }) = events.recv().await
        else {
            panic!("the new response finishes")
        };
        assert_eq!((id, heard.heard.as_str()), (new, "Hello."));
        assert_eq!(
            frames.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "640 samples = two 20 ms frames"
        );
        // A clear that races the end of a response that already played gets what was heard.
        let heard = clear(&tx, new, false).await;
        assert!(heard.complete);
        assert_eq!(heard.heard, "Hello.");
        cancel.cancel();
        task.await.unwrap();
    }

    /// Counts the clears it is given.
    struct Clears(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl AudioSink for Clears {
        fn write(&mut self, _frame: &[i16]) {}

        fn clear(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_interrupted_listener_is_always_cleared_and_another_only_once_it_heard_audio() {
        let clears = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, mut events, cancel, task) = spawn_playout(Clears(clears.clone()));
        let count = || clears.load(std::sync::atomic::Ordering::SeqCst);
        // Nothing of these was ever written.
        clear(&tx, ResponseId(1), false).await;
        assert_eq!(count(), 0);
        tx.send(PlayoutCommand::Sentence {
            id: ResponseId(2),
            text: "Queued.".into(),
        })
        .await
        .unwrap();
        clear(&tx, ResponseId(2), false).await;
        assert_eq!(count(), 0);
        // The interrupter cut the listener off: its clear must follow, even for a response
        // that finished playing just before.
        tx.send(PlayoutCommand::Sentence {
            id: ResponseId(3),
            text: "Done.".into(),
        })
        .await
        .unwrap();
        tx.send(PlayoutCommand::Audio {
            id: ResponseId(3),
            samples: vec![1; 320],
            words: vec![],
        })
        .await
        .unwrap();
        tx.send(PlayoutCommand::End {
            id: ResponseId(3),
            failure: None,
        })
        .await
        .unwrap();
        while !matches!(events.recv().await, Some(PlayoutEvent::Finished { .. })) {}
        assert_eq!(count(), 0, "a response that ends is not cleared");
        assert!(clear(&tx, ResponseId(3), true).await.complete);
        assert_eq!(count(), 1);
        clear(&tx, ResponseId(4), true).await;
        assert_eq!(count(), 2);
        cancel.cancel();
        task.await.unwrap();
    }

    struct Stamps(std::sync::Arc<std::sync::Mutex<Vec<Instant>>>);

    impl AudioSink for Stamps {
        fn write(&mut self, _frame: &[i16]) {
            self.0.lock().unwrap().push(Instant::now());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn audio_that_ran_dry_resumes_on_the_frame_cadence_or_at_once_if_late() {
        let stamps = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, _events, cancel, task) = spawn_playout(Stamps(stamps.clone()));
        let t0 = Instant::now();
        let id = ResponseId(1);
        let audio = |samples| PlayoutCommand::Audio {
            id,
            samples: vec![1; samples],
            words: vec![],
        };
        tx.send(PlayoutCommand::Sentence {
            id,
            text: "a b".into(),
        })
        .await
        .unwrap();
        tx.send(audio(640)).await.unwrap();
        // Dry after two frames (0 and 20 ms); more audio 5 ms after the second frame.
        tokio::time::sleep(Duration::from_millis(25)).await;
        tx.send(audio(320)).await.unwrap();
        // Dry again; audio long after the next frame was due.
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(audio(320)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancel.cancel();
        task.await.unwrap();
        let offsets: Vec<u128> = stamps
            .lock()
            .unwrap()
            .iter()
            .map(|t| (*t - t0).as_millis())
            .collect();
        assert_eq!(offsets, [0, 20, 40, 125]);
    }

    /// A listener `lag` samples behind what was written, like a browser's jitter buffer.
    struct Lagging {
        written: u64,
        lag: u64,
        cleared: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AudioSink for Lagging {
        fn write(&mut self, frame: &[i16]) {
            self.written += frame.len() as u64;
        }
        fn clear(&mut self) {
            self.cleared
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        fn played(&self) -> Option<u64> {
            Some(self.written.saturating_sub(self.lag))
        }
    }

    /// Plays two sentences of one second each for `play` then cuts; returns what was heard.
    async fn heard_after(play: Duration, lag: u64) -> (Heard, usize) {
        let cleared = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sink = Lagging {
            written: 0,
            lag,
            cleared: cleared.clone(),
        };
        let (tx, _events, cancel, task) = spawn_playout(sink);
        let id = ResponseId(1);
        for text in ["one two three four", "five six seven eight"] {
            tx.send(PlayoutCommand::Sentence {
                id,
                text: text.into(),
            })
            .await
            .unwrap();
            tx.send(PlayoutCommand::Audio {
                id,
                samples: vec![1; 16000],
                words: vec![],
            })
            .await
            .unwrap();
        }
        tokio::time::sleep(play).await;
        let heard = clear(&tx, id, false).await;
        cancel.cancel();
        task.await.unwrap();
        (heard, cleared.load(std::sync::atomic::Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn a_listener_behind_the_output_hears_less_than_was_written() {
        let (written, cleared) = heard_after(Duration::from_millis(1510), 0).await;
        assert_eq!(written.heard, "one two three four five six");
        assert_eq!(cleared, 1, "the sink is told to drop its buffer");
        // 400 ms still buffered downstream: the second sentence's first 0.1 s was heard,
        // not a whole word of it.
        let (heard, _) = heard_after(Duration::from_millis(1510), 6400).await;
        assert_eq!(heard.heard, "one two three four");
        // More than the response buffered: nothing of it was heard.
        let (heard, _) = heard_after(Duration::from_millis(500), 32000).await;
        assert_eq!(heard.heard, "");
    }

    fn sentence(text: &str, words: &[(&str, u64, u64)], received: u64, played: u64) -> Sentence {
        Sentence {
            text: text.into(),
            words: words
                .iter()
                .map(|(w, s, e)| WordTiming {
                    word: (*w).into(),
                    start: *s,
                    end: *e,
                })
                .collect(),
            received,
            played,
        }
    }

    #[test]
    fn heard_words_follow_word_timings() {
        let s = sentence(
            "one two three",
            &[("one", 0, 80), ("two", 100, 180), ("three", 200, 280)],
            300,
            190,
        );
        assert_eq!(partial(&s, 190, None), "one two");
        let s = sentence(
            "one two three",
            &[("one", 0, 80), ("two", 100, 180), ("three", 200, 280)],
            300,
            179,
        );
        assert_eq!(
            partial(&s, 179, None),
            "one",
            "a word counts once its audio ended"
        );
    }

    #[test]
    fn heard_words_without_timings_are_proportional_to_characters() {
        let s = sentence("Thanks for calling us", &[], 210, 100);
        // 21 chars * 100/210 = 10 chars: "Thanks for" is complete at a space.
        assert_eq!(partial(&s, 100, None), "Thanks for");
        let s = sentence("Thanks for calling us", &[], 210, 80);
        assert_eq!(
            partial(&s, 80, None),
            "Thanks",
            "a word cut in the middle is not heard"
        );
    }

    #[test]
    fn a_sentence_still_arriving_is_read_at_the_voice_s_measured_rate() {
        // 100 samples of 21 characters have arrived, all played: in proportion that would be
        // the whole sentence, but at 10 samples a character only 10 characters were spoken.
        let s = sentence("Thanks for calling us", &[], 100, 100);
        let rate = SpeakingRate {
            chars: 30,
            samples: 300,
        };
        assert_eq!(partial(&s, 100, Some(rate)), "Thanks for");
        assert_eq!(partial(&s, 100, None), "Thanks for calling us");
        assert_eq!(
            partial(&s, 100, Some(SpeakingRate::default())),
            "Thanks for calling us",
            "no measured rate: in proportion"
        );
    }

    #[test]
    fn the_cut_names_the_last_sentence_and_what_of_it_was_heard() {
        let track = Track {
            sentences: vec![
                sentence("Hello there.", &[], 120, 120),
                sentence("Thanks for calling us", &[], 100, 100),
            ],
            ..Track::default()
        };
        let rate = SpeakingRate {
            chars: 12,
            samples: 120,
        };
        let heard = track.heard(0, rate);
        assert_eq!(heard.heard, "Hello there. Thanks for");
        assert_eq!(
            heard.cut,
            SpeechCut {
                sentence: Some("Thanks for calling us".into()),
                played: 100,
                heard: "Thanks for".into(),
            }
        );
        // Forty samples still in the listener's buffer were not heard.
        let heard = track.heard(40, rate);
        assert_eq!(heard.cut.played, 60);
        assert_eq!(heard.cut.heard, "Thanks");
    }
}
