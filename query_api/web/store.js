// The client's state, kept in memory (a reload rebuilds it from `/v1/sync` and history).
// Messages are kept per conversation by `message_id` (duplicates dropped, ordered as integers);
// sends not yet acknowledged are kept by `client_msg_id` in the outbox.

export const byId = (a, b) => (BigInt(a) < BigInt(b) ? -1 : BigInt(a) > BigInt(b) ? 1 : 0);
export const atLeast = (watermark, id) => watermark != null && BigInt(watermark) >= BigInt(id);

export function otherMember(cid, me) {
  if (!cid.startsWith("dm:")) return null;
  const [, a, b] = cid.split(":");
  return a === me ? b : a;
}

export class Store {
  constructor(me) {
    this.me = me;
    this.conversations = new Map(); // cid -> conversation object (inbox)
    this.messages = new Map(); // cid -> Map(message_id -> message)
    this.olderAvailable = new Map(); // cid -> bool
    this.watermarks = new Map(); // cid -> Map(user_id -> {delivered, read})
    this.presence = new Map(); // user_id -> {state, last_seen}
    this.typing = new Map(); // cid -> Map(user_id -> expiry ms)
    this.outbox = new Map(); // client_msg_id -> {frame, status}
  }

  upsertConversation(conv) {
    const old = this.conversations.get(conv.conversation_id);
    const merged = { ...(old || {}), ...conv };
    // `conversation` frames carry last_message null and unread 0: keep what we know.
    if (old && conv.last_message == null) merged.last_message = old.last_message;
    if (old && conv.last_activity_ts == null) merged.last_activity_ts = old.last_activity_ts;
    if (old && !conv.unread_count) merged.unread_count = old.unread_count;
    this.conversations.set(conv.conversation_id, merged);
    return merged;
  }

  removeConversation(cid) {
    this.conversations.delete(cid);
    this.messages.delete(cid);
  }

  // Adds a message; false when it was already there (a duplicate from sync or a reconnect).
  addMessage(msg) {
    let list = this.messages.get(msg.conversation_id);
    if (!list) this.messages.set(msg.conversation_id, (list = new Map()));
    if (list.has(msg.message_id)) return false;
    list.set(msg.message_id, msg);
    if (msg.sender_id === this.me) this.outbox.delete(msg.client_msg_id);
    const conv = this.conversations.get(msg.conversation_id);
    if (conv) {
      const last = conv.last_message;
      if (!last || byId(last.message_id, msg.message_id) < 0) {
        conv.last_message = {
          message_id: msg.message_id,
          sender_id: msg.sender_id,
          preview: (msg.body || "").slice(0, 100),
          ts: msg.ts,
        };
        conv.last_activity_ts = Math.max(conv.last_activity_ts || 0, msg.ts);
      }
    }
    return true;
  }

  sortedMessages(cid) {
    const list = [...(this.messages.get(cid) || new Map()).values()];
    list.sort((a, b) => byId(a.message_id, b.message_id));
    const pending = [...this.outbox.values()]
      .filter((p) => p.frame.conversation_id === cid)
      .map((p) => ({
        message_id: null,
        client_msg_id: p.frame.client_msg_id,
        conversation_id: cid,
        sender_id: this.me,
        kind: p.frame.kind,
        body: p.frame.body,
        media: p.media || null,
        preview: p.preview || null,
        ts: p.ts,
        status: p.status,
      }));
    return [...list, ...pending];
  }

  oldestId(cid) {
    const ids = [...(this.messages.get(cid) || new Map()).keys()];
    ids.sort(byId);
    return ids[0] || null;
  }

  newestFromOthers(cid) {
    let best = null;
    for (const m of (this.messages.get(cid) || new Map()).values()) {
      if (m.sender_id !== this.me && (best === null || byId(best, m.message_id) < 0)) best = m.message_id;
    }
    return best;
  }

  newestId(cid) {
    let best = null;
    for (const id of (this.messages.get(cid) || new Map()).keys()) {
      if (best === null || byId(best, id) < 0) best = id;
    }
    return best;
  }

  setWatermark(cid, userId, status, messageId) {
    let marks = this.watermarks.get(cid);
    if (!marks) this.watermarks.set(cid, (marks = new Map()));
    const mark = marks.get(userId) || { delivered: null, read: null };
    const raise = (key) => {
      if (!atLeast(mark[key], messageId)) mark[key] = messageId;
    };
    raise("delivered");
    if (status === "read") raise("read");
    marks.set(userId, mark);
    return mark;
  }

  // "sending", "failed", "sent", "delivered" or "read" for one of the caller's messages.
  status(msg) {
    if (msg.message_id === null) return msg.status;
    const marks = this.watermarks.get(msg.conversation_id) || new Map();
    let delivered = false;
    let readers = 0;
    for (const [user, mark] of marks) {
      if (user === this.me) continue;
      if (atLeast(mark.read, msg.message_id)) readers += 1;
      if (atLeast(mark.delivered, msg.message_id)) delivered = true;
    }
    if (readers > 0) return "read";
    return delivered ? "delivered" : "sent";
  }

  // One more unread message, when it is from someone else and after the caller's read mark.
  bumpUnread(msg) {
    const conv = this.conversations.get(msg.conversation_id);
    const mine = (this.watermarks.get(msg.conversation_id) || new Map()).get(this.me);
    if (!conv || msg.sender_id === this.me || atLeast(mine && mine.read, msg.message_id)) return;
    conv.unread_count = Math.min((conv.unread_count || 0) + 1, 100);
  }

  // Nothing unread once the caller's read mark reaches the newest message from others.
  clearUnreadIfRead(cid) {
    const conv = this.conversations.get(cid);
    const mine = (this.watermarks.get(cid) || new Map()).get(this.me);
    const newest = this.newestFromOthers(cid);
    if (conv && (newest === null || atLeast(mine && mine.read, newest))) conv.unread_count = 0;
  }

  typists(cid, now) {
    const map = this.typing.get(cid) || new Map();
    return [...map.entries()].filter(([, until]) => until > now).map(([user]) => user);
  }

  inboxOrder() {
    return [...this.conversations.values()].sort(
      (a, b) => (b.last_activity_ts || 0) - (a.last_activity_ts || 0) || (a.conversation_id < b.conversation_id ? -1 : 1),
    );
  }
}
