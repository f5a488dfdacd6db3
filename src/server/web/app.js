// The turnflow page: the microphone to the server and the agent's audio back, and the
// conversation as it happens. Over WebRTC (Opus, the protocol on a data channel) when the server
// offers it, else, or with ?transport=ws, over the WebSocket (20 ms PCM16 frames, agent audio
// through the player worklet). Protocol: docs/protocol.md; WebRTC: docs/webrtc.md.
'use strict';

// How long WebRTC may take to connect before the page uses the WebSocket instead.
const WEBRTC_PATIENCE_MS = 4000;

const state = {
  transport: null, // 'webrtc' or 'websocket'
  fallback: null, // why WebRTC was not used
  socket: null, // the WebSocket, or the WebRTC data channel: both take send() and the protocol
  pc: null,
  resource: null, // the WebRTC session's URL, for DELETE
  remoteAudio: null,
  playoutMs: 80,
  agentPackets: 0,
  heard: null, // what the user heard of the last reply cut short
  context: null,
  stream: null,
  player: null,
  ready: false,
  turns: 0, // turn figures received
  userFinals: 0,
  agentReplies: 0,
  agentSamplesReceived: 0,
  agentSamplesPlayed: 0,
  clears: 0,
  speculation: { hit: 0, miss: 0, none: 0 }, // turns, by how speculation went
  toolCalls: 0,
  ended: null,
};
// Read by tests driving the page.
window.turnflow = state;

const talk = document.getElementById('talk');
const status = document.getElementById('status');
const log = document.getElementById('log');
const userCards = new Map(); // turn -> card
const agentCards = new Map(); // response -> card

function card(kind, who) {
  const el = document.createElement('div');
  el.className = `turn ${kind}`;
  el.innerHTML = `<div class="who"></div><div class="text"></div><div class="tags"></div>`;
  el.querySelector('.who').textContent = who;
  log.appendChild(el);
  el.scrollIntoView({ block: 'end', behavior: 'smooth' });
  return el;
}

function tag(el, text, cls) {
  const t = document.createElement('span');
  t.className = `tag ${cls || ''}`;
  t.textContent = text;
  el.querySelector('.tags').appendChild(t);
}

function userCard(turn) {
  if (!userCards.has(turn)) userCards.set(turn, card('user', `you · turn ${turn}`));
  return userCards.get(turn);
}

function agentCard(response) {
  if (!agentCards.has(response)) {
    const el = card('agent', 'agent');
    el.sentences = [];
    agentCards.set(response, el);
  }
  return agentCards.get(response);
}

// How speculation went in a turn: a hit with its eager lead and what presynthesizing the
// first chunk saved (the part of the voice's first-audio time done before the end of turn),
// or a miss with the guesses withdrawn.
function speculationTags(el, m) {
  state.speculation[m.speculation] = (state.speculation[m.speculation] || 0) + 1;
  if (m.speculation === 'hit') {
    const lead = m.lead_ms != null ? `, ${Math.round(m.lead_ms)} ms ahead` : '';
    tag(el, `speculation: hit${lead}`, 'hit');
    const b = m.breakdown;
    if (b && m.lead_ms != null) {
      const early = Math.min(b.tts_ttfb_ms, Math.max(0, m.lead_ms - b.llm_ttft_ms - b.first_piece_ms));
      if (early >= 1) tag(el, `first chunk: ${Math.round(early)} ms saved`, 'hit');
    }
  } else if (m.speculation === 'miss') {
    tag(el, `speculation: miss (${m.speculation_withdrawn} withdrawn)`);
  } else {
    tag(el, 'speculation: none');
  }
}

function onEvent(m) {
  switch (m.type) {
    case 'user_transcript': {
      const t = userCard(m.turn).querySelector('.text');
      t.textContent = m.transcript;
      t.classList.add('interim');
      break;
    }
    case 'user_finished': {
      const t = userCard(m.turn).querySelector('.text');
      t.textContent = m.transcript;
      t.classList.remove('interim');
      state.userFinals += 1;
      break;
    }
    case 'agent_sentence': {
      const el = agentCard(m.response);
      el.sentences.push(m.text);
      el.querySelector('.text').textContent = el.sentences.join(' ');
      break;
    }
    case 'tool_started': {
      const el = agentCard(m.response);
      tag(el, `→ ${m.tool}${m.speculative ? ' (while a guess)' : ''}`, m.speculative ? 'hit' : '');
      state.toolCalls += 1;
      break;
    }
    case 'tool_finished': {
      tag(agentCard(m.response), `${m.tool}: ${m.outcome} in ${Math.round(m.duration_ms)} ms`, m.outcome === 'ok' ? '' : 'cut');
      break;
    }
    case 'response_ended': {
      if (!agentCards.has(m.response) && !m.heard) break;
      const el = agentCard(m.response);
      const text = el.querySelector('.text');
      if (m.interrupted) {
        state.heard = m.heard;
        const said = el.sentences.join(' ');
        const rest = said.startsWith(m.heard) ? said.slice(m.heard.length) : '';
        text.textContent = m.heard;
        if (rest) {
          const s = document.createElement('span');
          s.className = 'unheard';
          s.textContent = rest;
          text.appendChild(s);
        }
        tag(el, 'cut by you', 'cut');
      } else if (m.heard) {
        text.textContent = m.heard;
      }
      if (m.error) tag(el, `${m.error.provider}: ${m.error.kind}`, 'cut');
      if (m.heard) state.agentReplies += 1;
      break;
    }
    case 'turn': {
      state.turns += 1;
      const el = userCard(m.index);
      if (m.response_latency_ms != null) tag(el, `reply in ${Math.round(m.response_latency_ms)} ms`);
      speculationTags(el, m);
      if (m.barge_in_stop_ms != null) tag(el, `stopped in ${m.barge_in_stop_ms.toFixed(1)} ms`, 'cut');
      break;
    }
    default:
      break;
  }
}

function onMessage(event) {
  if (event.data instanceof ArrayBuffer) {
    state.agentSamplesReceived += event.data.byteLength / 2;
    state.player.port.postMessage(event.data, [event.data]);
    return;
  }
  const m = JSON.parse(event.data);
  if (m.type === 'ready') {
    state.ready = true;
    state.player.port.postMessage({ type: 'rate', rate: m.output_sample_rate });
    status.textContent = `listening (${state.transport === 'webrtc' ? 'WebRTC' : 'WebSocket'})`;
  } else if (m.type === 'clear') {
    state.clears += 1;
    if (state.transport === 'webrtc') {
      // What the jitter buffer holds cannot be dropped; it is muted until it has played out.
      state.remoteAudio.muted = true;
      setTimeout(() => { state.remoteAudio.muted = false; }, state.playoutMs + 60);
    } else {
      state.player.port.postMessage({ type: 'clear' });
    }
  } else if (m.type === 'error') {
    status.textContent = `error: ${m.message}`;
  } else if (m.type === 'end') {
    state.ended = m.reason;
    if (!status.textContent.startsWith('error')) status.textContent = `ended (${m.reason})`;
    if (state.pc) state.pc.close();
  } else {
    onEvent(m);
  }
}

async function start() {
  talk.disabled = true;
  status.textContent = 'starting…';
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    state.context = new AudioContext();
    await state.context.audioWorklet.addModule(new URL('worklets.js', document.baseURI).href);
    await state.context.resume();
    const mic = state.context.createMediaStreamSource(state.stream);
    const capture = new AudioWorkletNode(state.context, 'capture');
    state.player = new AudioWorkletNode(state.context, 'player', { outputChannelCount: [1] });
    state.player.connect(state.context.destination);
    mic.connect(capture);

    const params = new URLSearchParams(location.search);
    const token = params.get('token');
    if (params.get('transport') !== 'ws') {
      try {
        await startWebRtc(token);
      } catch (e) {
        state.fallback = e.message;
        if (state.pc) state.pc.close();
        state.pc = null;
      }
    } else {
      state.fallback = 'asked for with ?transport=ws';
    }
    if (!state.transport) startWebSocket(token, capture);
    status.textContent = state.transport === 'webrtc'
      ? 'connecting (WebRTC)'
      : `connecting (WebSocket${state.fallback ? `: ${state.fallback}` : ''})`;
    talk.textContent = 'Stop';
    talk.classList.add('live');
    talk.disabled = false;
  } catch (e) {
    status.textContent = `cannot start: ${e.message}`;
    talk.disabled = false;
    stop(false);
  }
}

// The WebSocket: PCM16 frames from the capture worklet, agent audio to the player worklet,
// which reports what it played.
function startWebSocket(token, capture) {
  // Wherever the page is served (at the root, or under an application's path), the session
  // is beside it.
  const url = new URL('session', document.baseURI);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  if (token) url.searchParams.set('token', token);
  const socket = new WebSocket(url);
  socket.binaryType = 'arraybuffer';
  state.socket = socket;
  state.transport = 'websocket';
  socket.onopen = () => socket.send(JSON.stringify({ type: 'start', version: 1, sample_rate: 16000 }));
  socket.onmessage = onMessage;
  socket.onclose = (e) => {
    if (!state.ended) status.textContent = e.code === 1000 ? 'ended' : `closed (${e.code}${e.reason ? `: ${e.reason}` : ''})`;
    stop(false);
  };
  capture.port.onmessage = (e) => {
    if (state.ready && socket.readyState === WebSocket.OPEN) socket.send(e.data);
  };
  state.player.port.onmessage = (e) => {
    state.agentSamplesPlayed = e.data.played;
    if (state.ready && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: 'played', samples: e.data.played, buffered: e.data.buffered }));
    }
  };
}

// WebRTC: the microphone's track as Opus, the agent's audio into an <audio> element, the
// protocol on the 'turnflow' data channel. Resolves once the channel is open; rejects when
// the server has no WebRTC or the connection is not up within WEBRTC_PATIENCE_MS.
async function startWebRtc(token) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  state.pc = pc;
  const sender = pc.addTrack(state.stream.getAudioTracks()[0], state.stream);
  const channel = pc.createDataChannel('turnflow');
  state.remoteAudio = new Audio();
  state.remoteAudio.autoplay = true;
  pc.ontrack = (e) => {
    state.remoteAudio.srcObject = e.streams[0] || new MediaStream([e.track]);
  };
  await pc.setLocalDescription(await pc.createOffer());
  // One exchange, WHIP-style: the offer goes with its candidates.
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
    setTimeout(resolve, 1000);
  });
  const url = new URL('webrtc', document.baseURI);
  const headers = { 'Content-Type': 'application/sdp' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(url, { method: 'POST', headers, body: pc.localDescription.sdp });
  if (response.status !== 201) {
    throw new Error(`the server has no WebRTC here (${response.status})`);
  }
  const location = response.headers.get('Location');
  if (location) state.resource = new URL(location, url);
  await pc.setRemoteDescription({ type: 'answer', sdp: await response.text() });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`WebRTC did not connect within ${WEBRTC_PATIENCE_MS / 1000} s`)), WEBRTC_PATIENCE_MS);
    channel.onopen = () => { clearTimeout(timer); resolve(); };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed') { clearTimeout(timer); reject(new Error('WebRTC failed to connect')); }
    };
  });
  state.socket = channel;
  state.transport = 'webrtc';
  channel.onmessage = onMessage;
  channel.onclose = () => {
    if (!state.ended) status.textContent = 'closed';
    stop(false);
  };
  channel.send(JSON.stringify({ type: 'start', version: 1, sample_rate: 48000 }));
  // 16 kbit/s: the least at which Opus sends wideband speech (below it, narrowband, which
  // transcribes worse), and under 40 kbit/s with its packets' headers.
  const parameters = sender.getParameters();
  if (parameters.encodings && parameters.encodings.length) {
    parameters.encodings[0].maxBitrate = 16000;
    sender.setParameters(parameters).catch(() => {});
  }
  reportPlayout(pc, channel);
}

// Once a second: how long the browser holds agent audio before playing it (its jitter
// buffer, plus half the round trip), which the server needs to know what was heard.
function reportPlayout(pc, channel) {
  let last = null;
  const timer = setInterval(async () => {
    if (channel.readyState !== 'open') return clearInterval(timer);
    const stats = await pc.getStats();
    let inbound = null;
    let rtt = 0;
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') inbound = s;
      if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime != null) rtt = s.currentRoundTripTime;
    });
    if (!inbound) return;
    state.agentPackets = inbound.packetsReceived || 0;
    state.agentSamplesReceived = inbound.totalSamplesReceived || 0;
    state.agentSamplesPlayed = state.agentSamplesReceived - (inbound.concealedSamples || 0);
    const emitted = inbound.jitterBufferEmittedCount || 0;
    const delay = inbound.jitterBufferDelay || 0;
    if (last && emitted > last.emitted) {
      const jitter = (delay - last.delay) / (emitted - last.emitted);
      state.playoutMs = Math.round((jitter + rtt / 2) * 1000);
      channel.send(JSON.stringify({ type: 'playout', delay_ms: state.playoutMs }));
    }
    last = { emitted, delay };
  }, 1000);
}

function stop(tellServer) {
  if (tellServer && state.socket && ['open', WebSocket.OPEN].includes(state.socket.readyState)) {
    state.socket.send(JSON.stringify({ type: 'stop' }));
    status.textContent = 'finishing…';
  }
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null;
  state.ready = false;
  talk.textContent = 'Talk';
  talk.classList.remove('live');
}

talk.addEventListener('click', () => {
  if (talk.classList.contains('live')) stop(true);
  else start();
});
