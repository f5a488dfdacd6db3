//! What the agent says while the speech-to-text service is away, on tokio's paused clock: the
//! session is fed Flux's own events (a connection lost, a reconnect, or the client giving up)
//! and the engine's replies are read from its events.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use turnflow::engine::{
    AudioSink, Backends, CancellationToken, EngineEvent, SessionConfig, SessionError, start_session,
};
use turnflow::flux::client::FluxEventKind;
use turnflow::flux::{FluxError, FluxEvent};
use turnflow::llm::ScriptedLlm;
use turnflow::scenario::Scenario;
use turnflow::tts::SyntheticTts;

struct Speaker;

impl AudioSink for Speaker {
    fn write(&mut self, _frame: &[i16]) {}
}

type Feed = mpsc::UnboundedSender<Result<FluxEvent, FluxError>>;

/// A session whose Flux events come from the returned sender.
fn session() -> (
    Feed,
    turnflow::engine::SessionHandle,
    mpsc::Receiver<EngineEvent>,
) {
    session_with(SessionConfig::default())
}

/// [`session`] with `config`.
fn session_with(
    config: SessionConfig,
) -> (
    Feed,
    turnflow::engine::SessionHandle,
    mpsc::Receiver<EngineEvent>,
) {
    let scenario = Scenario::demo();
    let (feed, events) = mpsc::unbounded_channel();
    let stream = Box::pin(futures_util::stream::unfold(
        events,
        |mut events| async move { events.recv().await.map(|event| (event, events)) },
    ));
    let backends = Backends {
        llm: Arc::new(ScriptedLlm::from_scenario(&scenario)),
        tts: Arc::new(SyntheticTts::new(16000, scenario.tts.clone())),
        tools: None,
    };
    let (session, app_events) = start_session(
        config,
        stream,
        backends,
        Box::new(Speaker),
        CancellationToken::new(),
    );
    (feed, session, app_events)
}

fn event(kind: FluxEventKind) -> Result<FluxEvent, FluxError> {
    Ok(FluxEvent {
        received_at: Instant::now(),
        kind,
    })
}

/// What the agent said, as heard, until `until` has passed.
async fn said_within(events: &mut mpsc::Receiver<EngineEvent>, until: Duration) -> Vec<String> {
    let mut said = Vec::new();
    let deadline = Instant::now() + until;
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.recv()).await {
        if let EngineEvent::ResponseEnded { heard, .. } = e {
            said.push(heard);
        }
    }
    said
}

#[tokio::test(start_paused = true)]
async fn an_outage_is_announced_once_after_its_grace_and_not_again_after_the_reconnect() {
    let (feed, session, mut events) = session();
    feed.send(event(FluxEventKind::Reconnecting {
        reason: "connection lost".into(),
    }))
    .unwrap();
    assert!(
        said_within(&mut events, Duration::from_millis(1900))
            .await
            .is_empty(),
        "nothing within the grace"
    );
    assert_eq!(
        said_within(&mut events, Duration::from_secs(20)).await,
        ["Sorry, I'm having trouble hearing you. One moment."],
        "said once, however long the outage"
    );
    feed.send(event(FluxEventKind::Connected {
        request_id: "r".into(),
        attempt: 9,
    }))
    .unwrap();
    // A short drop after the reconnect is within its grace: nothing is said.
    feed.send(event(FluxEventKind::Reconnecting {
        reason: "connection lost".into(),
    }))
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    feed.send(event(FluxEventKind::Connected {
        request_id: "r".into(),
        attempt: 1,
    }))
    .unwrap();
    assert!(
        said_within(&mut events, Duration::from_secs(5))
            .await
            .is_empty()
    );
    drop(feed);
    assert!(session.finished().await.error.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_service_given_up_on_gets_a_goodbye_before_the_session_ends() {
    let (feed, session, mut events) = session();
    feed.send(event(FluxEventKind::Reconnecting {
        reason: "connection lost".into(),
    }))
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    feed.send(Err(FluxError::ReconnectFailed {
        reason: "connection lost".into(),
        attempts: 12,
        last_error: "past the 30s budget".into(),
    }))
    .unwrap();
    let said = said_within(&mut events, Duration::from_secs(30)).await;
    assert_eq!(
        said,
        [
            "Sorry, I'm having trouble hearing you. One moment.",
            "Sorry, I can't hear you right now. Please try again in a little while."
        ]
    );
    let outcome = tokio::time::timeout(Duration::from_secs(1), session.finished())
        .await
        .expect("the session ends once the goodbye is said");
    assert!(matches!(outcome.error, Some(SessionError::Flux(_))));
    let _ = feed;
}

#[tokio::test(start_paused = true)]
async fn lines_set_to_none_say_nothing() {
    let mut config = SessionConfig::default();
    config.outage.trouble = None;
    config.outage.goodbye = None;
    let (feed, session, mut app_events) = session_with(config);
    feed.send(event(FluxEventKind::Reconnecting {
        reason: "lost".into(),
    }))
    .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    feed.send(Err(FluxError::Closed)).unwrap();
    let outcome = session.finished().await;
    assert!(outcome.error.is_some());
    assert!(
        said_within(&mut app_events, Duration::from_secs(1))
            .await
            .is_empty()
    );
}
