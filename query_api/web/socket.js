// The WebSocket half of the protocol: heartbeat, reconnect with exponential backoff and jitter
// (1 s doubling to 30 s), and the server's `reconnect` frame (wait `after_ms`, then come back).
// The owner is told `ready` after the first `pong` of each connection: pushes are flowing
// from then on, so a sync started then misses nothing (docs/protocol.md, "After connecting").

const HEARTBEAT_MS = 25000; // the protocol asks for one at least every 30 s
const BACKOFF_FIRST_MS = 1000;
const BACKOFF_MAX_MS = 30000;

export function backoffDelay(attempt) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
  return Math.round(ceiling / 2 + Math.random() * (ceiling / 2)); // "equal jitter"
}

export class Connection {
  constructor(token, { onFrame, onReady, onState }) {
    this.token = token;
    this.onFrame = onFrame;
    this.onReady = onReady;
    this.onState = onState;
    this.ws = null;
    this.attempt = 0;
    this.serverDelay = null;
    this.stopped = false;
    this.ready = false;
    this.timers = [];
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    this.clearTimers();
    if (this.ws) this.ws.close(1000, "signed out");
  }

  clearTimers() {
    for (const t of this.timers) clearTimeout(t), clearInterval(t);
    this.timers = [];
  }

  open() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    // The one place a token may be in a URL: browsers cannot set headers on a WebSocket.
    const ws = new WebSocket(`${scheme}//${location.host}/v1/ws?token=${encodeURIComponent(this.token)}`);
    this.ws = ws;
    this.ready = false;
    this.onState("connecting");
    ws.onopen = () => {
      this.send({ type: "ping", ref: "hello" });
      this.timers.push(setInterval(() => this.send({ type: "ping" }), HEARTBEAT_MS));
    };
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame.type === "pong" && frame.ref === "hello" && !this.ready) {
        this.ready = true;
        this.attempt = 0;
        this.onState("online");
        this.onReady();
        return;
      }
      if (frame.type === "reconnect") {
        this.serverDelay = Number(frame.after_ms) || 0;
        return;
      }
      this.onFrame(frame);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.clearTimers();
      this.ready = false;
      if (this.stopped) return;
      const asked = this.serverDelay !== null; // a draining gateway said when to come back
      const delay = asked ? this.serverDelay : backoffDelay(this.attempt);
      this.serverDelay = null;
      this.attempt += 1;
      this.onState("reconnecting", delay, asked ? "server" : "lost");
      this.timers.push(setTimeout(() => this.open(), delay));
    };
  }

  // True when the frame went out; false when the socket is not open (the caller keeps it).
  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }
}
