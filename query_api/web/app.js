// The Tidings web client: sign-in, inbox, conversation, sending with optimistic display,
// receipts (ticks), typing, presence, groups, image upload with thumbnails, Web Push
// registration through a service worker, and reconnect-and-resume. Written against
// docs/protocol.md only. User content is only ever set with textContent (never as HTML).

import { Api, ApiError, devLogin } from "./api.js";
import { Connection } from "./socket.js";
import { Store, atLeast, otherMember } from "./store.js";

const SESSION_KEY = "tidings.session"; // sessionStorage: gone when the tab closes
const TYPING_SEND_EVERY_MS = 3000;
const TYPING_STOP_AFTER_MS = 4000;
const TYPING_SHOWN_MS = 6000;
// Follow-up syncs after each resume (docs/sdk.md, "Follow-up syncs", the SDK's rule): a message
// pushed before the new socket was registered reached no socket, and /v1/sync has it only once
// the server's read model applied it, which can be seconds after the push. So the client syncs
// again 1 s and 5 s after the resume, then at doubling gaps up to 30 s for as long as the last
// sync shows that read model behind the pushes, and stops 120 s after the resume in any case.
const RESYNC_AFTER_MS = [1000, 5000];
const RESYNC_MAX_GAP_MS = 30000;
const RESYNC_FOR_MS = 120000;
const SYNC_RETRY_MS = 2000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
};

function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function clock(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// The VAPID key as the bytes `applicationServerKey` takes (it comes as unpadded base64url).
function base64UrlBytes(text) {
  const binary = atob(text.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(text.length / 4) * 4, "="));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

// Until a service worker registration has an active worker (`navigator.serviceWorker.ready`
// would wait for one controlling this page, and the worker's scope is /web/, not /).
function activeWorker(registration) {
  if (registration.active) return Promise.resolve(registration.active);
  const worker = registration.installing || registration.waiting;
  return new Promise((resolve, reject) => {
    worker.addEventListener("statechange", () => {
      if (worker.state === "activated") resolve(worker);
      else if (worker.state === "redundant") reject(new Error("the service worker failed to install"));
    });
  });
}

function tokenClaims(token) {
  const part = token.split(".")[1];
  if (!part) throw new Error("not a token");
  const json = atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="));
  return JSON.parse(json);
}

// ---------------------------------------------------------------- sign-in

function showLogin(message = "") {
  $("chat").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("login-user").focus();
}

function sessionFromToken(token) {
  const claims = tokenClaims(token);
  if (!claims.sub || !claims.exp) throw new Error("the token has no sub or exp");
  if (claims.exp * 1000 <= Date.now()) throw new Error("the token has expired");
  return { token, user_id: claims.sub, device_id: claims.dev || "default" };
}

$("dev-login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const user = $("login-user").value.trim();
  try {
    const answer = await devLogin(user, `web-${newId().slice(0, 8)}`);
    begin({ token: answer.token, user_id: answer.user_id, device_id: answer.device_id });
  } catch (error) {
    const off = error instanceof ApiError && error.status === 404;
    $("login-error").textContent = off
      ? "Development sign-in is off on this gateway: use a token instead."
      : `Sign-in failed: ${error.message}`;
  }
});

$("token-login").addEventListener("submit", (event) => {
  event.preventDefault();
  try {
    begin(sessionFromToken($("login-token").value.trim()));
  } catch (error) {
    $("login-error").textContent = `That token cannot be used: ${error.message}`;
  }
});

$("sign-out").addEventListener("click", () => end(""));

// ---------------------------------------------------------------- the chat

let app = null;

function begin(session) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  $("login").hidden = true;
  $("chat").hidden = false;
  $("me").textContent = session.user_id;
  app = new Chat(session);
  app.start();
}

function end(message) {
  sessionStorage.removeItem(SESSION_KEY);
  if (app) app.stop();
  app = null;
  showLogin(message);
}

class Chat {
  constructor(session) {
    this.me = session.user_id;
    this.deviceId = session.device_id;
    this.thumbs = new Map(); // media_id -> {state: "loading" | "ready" | "failed", url}
    this.api = new Api(session.token);
    this.expiresMs = tokenClaims(session.token).exp * 1000;
    this.store = new Store(this.me);
    this.open = null;
    this.cursor = null; // in memory: a reload starts from the starting state again
    this.syncQueue = Promise.resolve(); // syncs run one after the other (see sync)
    this.connection = 0; // counts the connections that became ready
    // While a resume's follow-up syncs run: each message pushed on this connection, with its
    // arrival number, or null once a sync returned it too (see followUps).
    this.live = null;
    this.pushes = 0;
    // Conversations this user left or was removed from: a message of theirs that comes later
    // (a late push, a sync page from before the removal) must not bring them back.
    this.left = new Set();
    this.watched = "";
    this.typingSentAt = 0;
    this.typingStop = null;
    this.conn = new Connection(session.token, {
      onFrame: (frame) => this.onFrame(frame),
      onReady: () => this.onReady(),
      onState: (state, delay, reason) => this.onConnectionState(state, delay, reason),
    });
    this.listeners = [];
  }

  start() {
    this.bindForms();
    this.renderInbox();
    this.renderConversation();
    this.conn.start();
  }

  stop() {
    this.conn.stop();
    for (const entry of this.thumbs.values()) if (entry.url) URL.revokeObjectURL(entry.url);
    for (const [target, type, fn] of this.listeners) target.removeEventListener(type, fn);
  }

  listen(target, type, fn) {
    target.addEventListener(type, fn);
    this.listeners.push([target, type, fn]);
  }

  bindForms() {
    this.listen($("new-direct"), "submit", (e) => {
      e.preventDefault();
      this.openDirect($("direct-user").value.trim());
    });
    this.listen($("new-group"), "submit", (e) => {
      e.preventDefault();
      this.createGroup();
    });
    this.listen($("add-member"), "submit", (e) => {
      e.preventDefault();
      this.addMember($("add-member-user").value.trim());
    });
    this.listen($("leave"), "click", () => this.leave());
    this.listen($("older"), "click", () => this.loadOlder());
    this.listen($("composer"), "submit", (e) => {
      e.preventDefault();
      this.sendText();
    });
    this.listen($("composer-text"), "keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.sendText();
      }
    });
    this.listen($("composer-image"), "change", () => {
      const input = $("composer-image");
      const file = input.files && input.files[0];
      input.value = "";
      this.sendImage(file);
    });
    this.listen($("push-enable"), "click", () => this.enablePush());
    this.listen($("composer-text"), "input", () => this.typed());
    this.listen($("composer-text"), "blur", () => this.stopTyping());
    this.listen(document, "visibilitychange", () => {
      const visible = document.visibilityState === "visible";
      this.conn.send({ type: "presence", state: visible ? "online" : "away" });
      if (visible && this.open) this.markRead(this.open);
    });
  }

  notice(text) {
    $("notice").textContent = text;
  }

  failed(error) {
    if (error instanceof ApiError && error.status === 401) {
      end("Your session has ended: sign in again.");
      return;
    }
    this.notice(error.message || String(error));
  }

  // ---------------------------------------------------------- connection

  onConnectionState(state, delay, reason) {
    if (state === "reconnecting" && Date.now() >= this.expiresMs) {
      end("Your session has ended: sign in again."); // the gateway refuses an expired token
      return;
    }
    const seconds = Math.ceil((delay || 0) / 1000);
    const why = reason === "server" ? "The server is restarting" : "Connection lost";
    const text = {
      connecting: "Connecting…",
      online: "Connected",
      reconnecting: `${why}: reconnecting in ${seconds} s…`,
    }[state];
    $("connection").textContent = text;
    $("connection").dataset.state = state;
    if (reason === "server") {
      // how many times a draining server asked us to come back (shown to tests, not people)
      const count = Number($("connection").dataset.serverReconnects || 0) + 1;
      $("connection").dataset.serverReconnects = String(count);
    }
  }

  async onReady() {
    // Pushes flow from here on; what happened while we were away comes from sync.
    const connection = ++this.connection;
    this.live = new Map();
    this.conn.send({ type: "presence", state: document.visibilityState === "visible" ? "online" : "away" });
    if (this.open) this.conn.send({ type: "view", conversation_id: this.open });
    this.watched = "";
    await this.sync();
    this.updateWatch();
    for (const pending of this.store.outbox.values()) {
      // same client_msg_id: no duplicate (an image still uploading is sent once its upload is done)
      if (pending.status !== "failed" && pending.status !== "uploading") this.conn.send(pending.frame);
    }
    if (this.open) this.markRead(this.open);
    this.followUps(connection, Date.now());
  }

  // One whole sync (every page), begun once any sync in flight has ended: one begun earlier may
  // have read the server before what the caller waits for. Resolves to whether it found a
  // message this connection had not pushed, or null when the server refused it (4xx, shown).
  sync() {
    const run = this.syncQueue.then(() => this.syncPages());
    this.syncQueue = run.catch(() => {});
    return run;
  }

  async syncPages() {
    let unpushed = false;
    for (;;) {
      let page;
      try {
        page = await this.api.sync(this.cursor);
      } catch (error) {
        if (error instanceof ApiError && error.status < 500 && error.status !== 429) {
          this.failed(error);
          return null;
        }
        await sleep(SYNC_RETRY_MS); // a 5xx, a 429 or no connection: tried again, not given up
        continue;
      }
      if (this.live) {
        for (const m of page.messages) {
          unpushed = unpushed || !this.live.has(m.message_id);
          this.live.set(m.message_id, null); // pushed or not: synced now
        }
      }
      this.applySync(page, this.cursor === null);
      this.cursor = page.cursor;
      if (!page.has_more) return unpushed;
    }
  }

  // The follow-up syncs of one connection (RESYNC_AFTER_MS above). One shows the client caught
  // up when it found no message this connection had not pushed, and every message pushed
  // before it began has come back in some sync. They end with the connection.
  async followUps(connection, resumedAt) {
    const current = () => connection === this.connection && this.conn.ready && !this.conn.stopped;
    let gap = RESYNC_AFTER_MS[1] - RESYNC_AFTER_MS[0];
    let at = resumedAt;
    let caughtUp = false;
    for (let done = 0; ; done++) {
      if (done < RESYNC_AFTER_MS.length) at = resumedAt + RESYNC_AFTER_MS[done];
      else if (caughtUp || at - resumedAt >= RESYNC_FOR_MS) break;
      else {
        gap = Math.min(gap * 2, RESYNC_MAX_GAP_MS);
        at = Math.min(at + gap, resumedAt + RESYNC_FOR_MS);
      }
      await sleep(Math.max(0, at - Date.now()));
      if (!current()) return;
      const before = this.pushes;
      const unpushed = await this.sync();
      if (unpushed === null || !current()) return;
      const waiting = [...this.live.values()].some((n) => n !== null && n < before);
      caughtUp = !unpushed && !waiting;
    }
    this.live = null;
  }

  applySync(page, starting) {
    const store = this.store;
    for (const change of page.conversations) {
      if (change.event === "removed") this.forget(change.conversation.conversation_id);
      else this.joined(change.conversation);
    }
    for (const r of page.receipts) store.setWatermark(r.conversation_id, r.user_id, r.status, r.message_id);
    for (const m of page.messages) {
      if (this.left.has(m.conversation_id)) continue;
      if (!store.conversations.has(m.conversation_id)) this.placeholder(m.conversation_id);
      // The starting state's conversations carry the server's unread counts already.
      if (store.addMessage(m) && !starting) store.bumpUnread(m);
    }
    for (const cid of store.conversations.keys()) this.acknowledge(cid);
    this.renderInbox();
    this.renderConversation();
  }

  updateWatch() {
    const users = new Set();
    for (const cid of this.store.conversations.keys()) {
      const other = otherMember(cid, this.me);
      if (other && other !== this.me) users.add(other);
    }
    const list = [...users].sort().slice(0, 500);
    const key = list.join(",");
    if (key !== this.watched && this.conn.send({ type: "watch", user_ids: list })) this.watched = key;
  }

  // ---------------------------------------------------------- frames

  onFrame(frame) {
    const store = this.store;
    switch (frame.type) {
      case "ack": {
        const pending = store.outbox.get(frame.client_msg_id);
        if (!pending) return;
        store.outbox.delete(frame.client_msg_id);
        store.addMessage({
          message_id: frame.message_id,
          conversation_id: frame.conversation_id,
          sender_id: this.me,
          client_msg_id: frame.client_msg_id,
          kind: pending.frame.kind,
          body: pending.frame.body,
          media: pending.media || null,
          ts: frame.ts,
        });
        store.setWatermark(frame.conversation_id, this.me, "read", frame.message_id); // sending reads
        store.clearUnreadIfRead(frame.conversation_id);
        break;
      }
      case "message": {
        const m = frame.message;
        if (this.live && !this.live.has(m.message_id)) this.live.set(m.message_id, this.pushes);
        this.pushes += 1;
        if (this.left.has(m.conversation_id)) return;
        if (!store.conversations.has(m.conversation_id)) this.placeholder(m.conversation_id);
        const fresh = store.addMessage(m);
        if (fresh && m.sender_id !== this.me) {
          const typing = store.typing.get(m.conversation_id);
          if (typing) typing.delete(m.sender_id);
          store.bumpUnread(m);
          this.acknowledge(m.conversation_id);
        }
        break;
      }
      case "receipt":
        store.setWatermark(frame.conversation_id, frame.user_id, frame.status, frame.message_id);
        if (frame.user_id === this.me && frame.status === "read") store.clearUnreadIfRead(frame.conversation_id);
        break;
      case "typing": {
        let map = store.typing.get(frame.conversation_id);
        if (!map) store.typing.set(frame.conversation_id, (map = new Map()));
        if (frame.state === "start") {
          map.set(frame.user_id, Date.now() + TYPING_SHOWN_MS);
          setTimeout(() => this.renderTyping(), TYPING_SHOWN_MS + 50);
        } else map.delete(frame.user_id);
        this.renderTyping();
        return;
      }
      case "presence":
        store.presence.set(frame.user_id, { state: frame.state, last_seen: frame.last_seen });
        break;
      case "conversation":
        if (frame.event === "removed") this.forget(frame.conversation.conversation_id);
        else this.joined(frame.conversation);
        this.updateWatch();
        break;
      case "error":
        this.onError(frame);
        break;
      default:
        return;
    }
    this.renderInbox();
    this.renderConversation();
  }

  onError(frame) {
    const pending = frame.ref ? this.store.outbox.get(frame.ref) : null;
    if (pending && (frame.code === "rate_limited" || frame.code === "unavailable")) {
      const wait = (frame.retry_after || 2) * 1000;
      setTimeout(() => this.store.outbox.has(frame.ref) && this.conn.send(pending.frame), wait);
      this.notice(`Not sent yet (${frame.code}): trying again.`);
      return;
    }
    if (pending) pending.status = "failed";
    this.notice(`${frame.code}: ${frame.message}`);
  }

  placeholder(cid) {
    this.store.upsertConversation({
      conversation_id: cid,
      kind: cid.startsWith("dm:") ? "direct" : "group",
      title: null,
      member_count: cid.startsWith("dm:") ? 2 : 0,
      last_message: null,
      unread_count: 0,
      last_activity_ts: Date.now(),
    });
    this.api
      .conversation(cid)
      .then(({ conversation }) => {
        if (this.left.has(cid)) return; // left while this was on its way
        this.store.upsertConversation(conversation);
        this.updateWatch();
        this.renderInbox();
        this.renderConversation();
      })
      .catch((error) => this.failed(error));
  }

  // The server says this user is a member (again): a conversation left before comes back.
  joined(conversation) {
    this.left.delete(conversation.conversation_id);
    this.store.upsertConversation(conversation);
  }

  forget(cid) {
    this.left.add(cid);
    this.store.removeConversation(cid);
    if (this.open === cid) {
      this.open = null;
      this.conn.send({ type: "view", conversation_id: null });
    }
  }

  // ---------------------------------------------------------- receipts

  // Newer messages from others: `read` when the conversation is on screen, else `delivered`.
  acknowledge(cid) {
    const newest = this.store.newestFromOthers(cid);
    if (!newest) return;
    if (cid === this.open && document.visibilityState === "visible") {
      this.markRead(cid);
      return;
    }
    const mine = (this.store.watermarks.get(cid) || new Map()).get(this.me);
    if (mine && atLeast(mine.delivered, newest)) return;
    this.store.setWatermark(cid, this.me, "delivered", newest);
    this.receipt(cid, newest, "delivered");
  }

  markRead(cid) {
    const newest = this.store.newestFromOthers(cid);
    const conv = this.store.conversations.get(cid);
    if (!newest) return;
    const mine = (this.store.watermarks.get(cid) || new Map()).get(this.me);
    if (!(mine && atLeast(mine.read, newest))) {
      this.store.setWatermark(cid, this.me, "read", newest);
      this.receipt(cid, newest, "read");
    }
    if (conv) conv.unread_count = 0;
  }

  receipt(cid, messageId, status) {
    const frame = { type: "receipt", conversation_id: cid, message_id: messageId, status };
    if (!this.conn.send(frame)) {
      this.api
        .postReceipt(cid, messageId, status)
        .catch(() => {}); // best effort: the next receipt carries the watermark further anyway
    }
  }

  // ---------------------------------------------------------- actions

  async openConversation(cid) {
    if (this.open && this.open !== cid) this.stopTyping();
    this.open = cid;
    this.conn.send({ type: "view", conversation_id: cid });
    this.renderInbox();
    this.renderConversation();
    $("composer-text").focus();
    try {
      const [page, marks] = await Promise.all([this.api.history(cid), this.api.receipts(cid)]);
      for (const m of page.messages) this.store.addMessage(m);
      if (!this.store.olderAvailable.has(cid)) this.store.olderAvailable.set(cid, page.has_more);
      for (const r of marks.receipts) {
        if (r.delivered) this.store.setWatermark(cid, r.user_id, "delivered", r.delivered);
        if (r.read) this.store.setWatermark(cid, r.user_id, "read", r.read);
      }
      const other = otherMember(cid, this.me);
      if (other && other !== this.me && !this.store.presence.has(other)) {
        const p = await this.api.presence(other);
        if (!this.store.presence.has(other)) this.store.presence.set(other, p);
      }
    } catch (error) {
      this.failed(error);
    }
    if (this.open === cid) {
      this.markRead(cid);
      this.renderInbox();
      this.renderConversation({ toBottom: true });
    }
  }

  async loadOlder() {
    const cid = this.open;
    const oldest = this.store.oldestId(cid);
    if (!cid || !oldest) return;
    const list = $("messages");
    const fromBottom = list.scrollHeight - list.scrollTop;
    try {
      const page = await this.api.history(cid, oldest);
      for (const m of page.messages) this.store.addMessage(m);
      this.store.olderAvailable.set(cid, page.has_more);
    } catch (error) {
      this.failed(error);
    }
    this.renderConversation();
    list.scrollTop = list.scrollHeight - fromBottom; // keep the reader's place
  }

  async openDirect(userId) {
    if (!userId) return;
    try {
      const { conversation } = await this.api.openDirect(userId);
      this.joined(conversation);
      $("direct-user").value = "";
      this.updateWatch();
      await this.openConversation(conversation.conversation_id);
    } catch (error) {
      this.failed(error);
    }
  }

  async createGroup() {
    const title = $("group-title").value.trim();
    const members = $("group-members").value.split(/[\s,]+/).filter(Boolean);
    try {
      const { conversation } = await this.api.createGroup(title, members);
      this.joined(conversation);
      $("group-title").value = "";
      $("group-members").value = "";
      $("new-group-box").open = false;
      await this.openConversation(conversation.conversation_id);
    } catch (error) {
      this.failed(error);
    }
  }

  async addMember(userId) {
    if (!this.open || !userId) return;
    try {
      const { members } = await this.api.addMembers(this.open, [userId]);
      $("add-member-user").value = "";
      this.notice(members.length ? `Added ${members.map((m) => m.user_id).join(", ")}.` : `${userId} is already a member.`);
    } catch (error) {
      this.failed(error);
    }
  }

  async leave() {
    const cid = this.open;
    if (!cid) return;
    try {
      await this.api.removeMember(cid, this.me);
      this.forget(cid);
      this.renderInbox();
      this.renderConversation();
    } catch (error) {
      this.failed(error);
    }
  }

  sendText() {
    const box = $("composer-text");
    const body = box.value.trim();
    if (!this.open || !body) return;
    const id = newId();
    const frame = { type: "send", ref: id, client_msg_id: id, conversation_id: this.open, kind: "text", body };
    this.store.outbox.set(id, { frame, status: "sending", ts: Date.now() });
    box.value = "";
    this.stopTyping();
    this.conn.send(frame); // when the socket is down it goes out on reconnect
    this.renderConversation({ toBottom: true });
  }

  // An image: uploaded first (POST /v1/media; shown at once from the file itself, "Uploading…"),
  // then sent like a text, with the media_id, through the same outbox.
  async sendImage(file) {
    if (!this.open || !file) return;
    const id = newId();
    const frame = { type: "send", ref: id, client_msg_id: id, conversation_id: this.open, kind: "image", body: "" };
    const preview = URL.createObjectURL(file);
    const pending = { frame, status: "uploading", ts: Date.now(), preview };
    this.store.outbox.set(id, pending);
    this.renderConversation({ toBottom: true });
    try {
      const media = await this.api.uploadMedia(file);
      frame.media_id = media.media_id;
      pending.media = media;
      pending.status = "sending";
      this.thumbs.set(media.media_id, { state: "ready", url: preview }); // the sender has the image
      this.conn.send(frame); // when the socket is down it goes out on reconnect
    } catch (error) {
      pending.status = "failed";
      this.failed(error);
    }
    this.renderConversation();
  }

  // The thumbnail of an image (or video) message, fetched once through the media API.
  loadThumbnail(mediaId) {
    this.thumbs.set(mediaId, { state: "loading", url: null });
    this.api
      .mediaBlob(mediaId, { thumbnail: true })
      .then((blob) => this.thumbs.set(mediaId, { state: "ready", url: URL.createObjectURL(blob) }))
      .catch(() => this.thumbs.set(mediaId, { state: "failed", url: null }))
      .finally(() => this.renderConversation());
  }

  mediaNode(m) {
    const from = m.sender_id === this.me ? "you" : m.sender_id;
    if (m.preview) return el("img", { class: "thumb", src: m.preview, alt: `Image from ${from}` });
    if (!m.media) return el("span", { text: `[${m.kind}]` });
    const mediaId = m.media.media_id;
    if (m.kind !== "image" && m.kind !== "video") {
      return el("span", { class: "file", text: `[${m.kind}: ${m.media.content_type}, ${m.media.size} bytes]` });
    }
    if (!this.thumbs.has(mediaId)) this.loadThumbnail(mediaId);
    const entry = this.thumbs.get(mediaId);
    if (entry.state === "ready") {
      return el("img", { class: "thumb", src: entry.url, alt: `${m.kind === "image" ? "Image" : "Video"} from ${from}`, "data-media-id": mediaId });
    }
    const text = entry.state === "failed" ? `[${m.kind} unavailable]` : `Loading ${m.kind}…`;
    return el("span", { class: "thumb-placeholder", "data-media-id": mediaId, text });
  }

  // Web Push: the service worker (/web/sw.js, scope /web/) is registered, the browser subscribes
  // with the server's VAPID key, and the subscription goes to PUT /v1/devices/{device}/push.
  // The worker shows each notification; a click brings the chat forward.
  async enablePush() {
    const say = (text, state) => {
      $("push-state").textContent = text;
      $("push-state").dataset.state = state;
    };
    if (!("serviceWorker" in navigator) || !("PushManager" in window) || !("Notification" in window)) {
      say("This browser cannot receive notifications.", "unsupported");
      return;
    }
    let step = "permission";
    try {
      if ((await Notification.requestPermission()) !== "granted") {
        say("Notifications are blocked for this site.", "denied");
        return;
      }
      step = "service worker";
      const registration = await navigator.serviceWorker.register("/web/sw.js", { scope: "/web/" });
      await activeWorker(registration);
      say("Service worker ready; subscribing…", "subscribing");
      step = "subscription";
      const { public_key: key } = await this.api.webPushKey();
      const subscription =
        (await registration.pushManager.getSubscription()) ||
        (await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: base64UrlBytes(key) }));
      const { endpoint, keys } = subscription.toJSON();
      step = "registration";
      await this.api.registerPush(this.deviceId, { provider: "webpush", endpoint, keys: { p256dh: keys.p256dh, auth: keys.auth } });
      say("Notifications are on for this browser.", "on");
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return this.failed(error);
      say(`Notifications could not be turned on (${step}): ${error.name || "Error"}: ${error.message}`, "failed");
    }
  }

  typed() {
    if (!this.open) return;
    const now = Date.now();
    if (now - this.typingSentAt > TYPING_SEND_EVERY_MS) {
      this.typingSentAt = now;
      this.conn.send({ type: "typing", conversation_id: this.open, state: "start" });
    }
    clearTimeout(this.typingStop);
    this.typingStop = setTimeout(() => this.stopTyping(), TYPING_STOP_AFTER_MS);
  }

  stopTyping() {
    clearTimeout(this.typingStop);
    if (this.typingSentAt && this.open) this.conn.send({ type: "typing", conversation_id: this.open, state: "stop" });
    this.typingSentAt = 0;
  }

  // ---------------------------------------------------------- rendering

  title(conv) {
    if (conv.kind === "group") return conv.title || "Group";
    const other = otherMember(conv.conversation_id, this.me);
    return other === this.me ? `${this.me} (notes)` : other;
  }

  presenceText(userId) {
    const p = this.store.presence.get(userId);
    if (!p) return "";
    if (p.state === "offline") return p.last_seen ? `last seen ${clock(p.last_seen)}` : "offline";
    return p.state;
  }

  renderInbox() {
    const items = this.store.inboxOrder().map((conv) => {
      const cid = conv.conversation_id;
      const other = otherMember(cid, this.me);
      const title = el("span", { class: "title" });
      if (other && other !== this.me) {
        const p = this.store.presence.get(other);
        title.append(el("span", { class: "dot", "data-state": p ? p.state : "offline", "aria-hidden": "true" }));
      }
      title.append(this.title(conv));
      const last = conv.last_message;
      const preview = last ? `${last.sender_id === this.me ? "You: " : ""}${last.preview || "[media]"}` : "No messages yet";
      const button = el(
        "button",
        { type: "button", onclick: () => this.openConversation(cid) },
        title,
        el("span", { class: "when", text: conv.last_activity_ts ? clock(conv.last_activity_ts) : "" }),
        el("span", { class: "preview", text: preview }),
      );
      if (conv.unread_count > 0) {
        button.append(el("span", { class: "unread", "aria-label": `${conv.unread_count} unread`, text: String(conv.unread_count) }));
      }
      const item = el("li", { "data-conversation-id": cid, "data-unread": String(conv.unread_count || 0) }, button);
      if (cid === this.open) item.setAttribute("aria-current", "true");
      return item;
    });
    $("inbox").replaceChildren(...items);
  }

  renderConversation({ toBottom = false } = {}) {
    const cid = this.open;
    const conv = cid ? this.store.conversations.get(cid) : null;
    $("empty").hidden = Boolean(conv);
    $("conversation-body").hidden = !conv;
    if (!conv) return;
    $("conversation-title").textContent = this.title(conv);
    const other = otherMember(cid, this.me);
    $("presence").textContent =
      conv.kind === "group" ? `${conv.member_count} members` : other !== this.me ? this.presenceText(other) : "";
    $("group-tools").hidden = conv.kind !== "group";
    $("older").hidden = !this.store.olderAvailable.get(cid);

    const list = $("messages");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const labels = { uploading: "Uploading…", sending: "Sending…", failed: "Not sent", sent: "✓", delivered: "✓✓", read: "✓✓" };
    const names = { uploading: "uploading", sending: "sending", failed: "not sent", sent: "sent", delivered: "delivered", read: "read" };
    const items = this.store.sortedMessages(cid).map((m) => {
      const mine = m.sender_id === this.me;
      const meta = el("div", { class: "meta" }, m.ts ? clock(m.ts) : "");
      let status = "";
      if (mine) {
        status = this.store.status(m);
        meta.append(" ", el("span", { class: "ticks", "data-status": status, title: names[status], "aria-label": names[status], text: labels[status] }));
      }
      const item = el("li", { class: mine ? "message mine" : "message", "data-client-msg-id": m.client_msg_id });
      if (m.message_id) item.dataset.messageId = m.message_id;
      if (status) item.dataset.status = status;
      if (!mine && conv.kind === "group") item.append(el("div", { class: "sender", text: m.sender_id }));
      if (m.media || m.preview) {
        const body = el("div", { class: "body" }, this.mediaNode(m));
        if (m.body) body.append(el("div", { class: "caption", text: m.body }));
        item.append(body, meta);
      } else item.append(el("div", { class: "body", text: m.body || `[${m.kind}]` }), meta);
      return item;
    });
    list.replaceChildren(...items);
    if (toBottom || atBottom) list.scrollTop = list.scrollHeight;
    this.renderTyping();
  }

  renderTyping() {
    const names = this.open ? this.store.typists(this.open, Date.now()).filter((u) => u !== this.me) : [];
    $("typing").textContent = names.length
      ? `${names.join(", ")} ${names.length === 1 ? "is" : "are"} typing…`
      : "";
  }
}

// ---------------------------------------------------------------- start

function boot() {
  const saved = sessionStorage.getItem(SESSION_KEY);
  if (!saved) return showLogin();
  try {
    const session = JSON.parse(saved);
    sessionFromToken(session.token); // still valid?
    begin(session);
  } catch {
    end("Your session has ended: sign in again.");
  }
}

boot();
