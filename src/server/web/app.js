// The turnflow page: microphone to the server in 20 ms PCM16 frames, agent audio back through
// the player worklet, and the conversation as it happens. Protocol: docs/protocol.md.
'use strict';

const state = {
  socket: null,
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
    status.textContent = 'listening';
  } else if (m.type === 'clear') {
    state.clears += 1;
    state.player.port.postMessage({ type: 'clear' });
  } else if (m.type === 'error') {
    status.textContent = `error: ${m.message}`;
  } else if (m.type === 'end') {
    state.ended = m.reason;
    if (!status.textContent.startsWith('error')) status.textContent = `ended (${m.reason})`;
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

    const token = new URLSearchParams(location.search).get('token');
    // Wherever the page is served (at the root, or under an application's path), the session
    // is beside it.
    const url = new URL('session', document.baseURI);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    if (token) url.searchParams.set('token', token);
    const socket = new WebSocket(url);
    socket.binaryType = 'arraybuffer';
    state.socket = socket;
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
    talk.textContent = 'Stop';
    talk.classList.add('live');
    talk.disabled = false;
  } catch (e) {
    status.textContent = `cannot start: ${e.message}`;
    talk.disabled = false;
    stop(false);
  }
}

function stop(tellServer) {
  if (tellServer && state.socket && state.socket.readyState === WebSocket.OPEN) {
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
