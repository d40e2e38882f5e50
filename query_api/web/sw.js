// The web client's service worker (served as /web/sw.js, scope /web/): it receives Web Push
// notifications and shows them. The payload is the protocol's notification (docs/protocol.md,
// Push): {notification_id, user_id, device_id, priority, badge, conversations: [{conversation_id,
// count, last_message_id, sender_id, preview}]}; `preview` is null for media and encrypted
// conversations. A retried delivery carries the same notification_id: used as the tag, it
// replaces the one shown instead of adding a second.

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

function describe(note) {
  const conversations = (note && Array.isArray(note.conversations) && note.conversations) || [];
  const count = conversations.reduce((n, c) => n + (Number(c.count) || 0), 0);
  const senders = [...new Set(conversations.map((c) => c.sender_id).filter(Boolean))];
  const title =
    count <= 1 && senders.length === 1
      ? `New message from ${senders[0]}`
      : `${count || "New"} new messages${senders.length ? ` from ${senders.join(", ")}` : ""}`;
  const body = conversations
    .map((c) => `${c.sender_id}: ${c.preview != null ? c.preview : `${c.count} new`}`)
    .join("\n");
  return { title, body, count, conversations };
}

self.addEventListener("push", (event) => {
  let note = null;
  try {
    note = event.data ? event.data.json() : null;
  } catch {
    note = null; // not JSON: still say that something arrived
  }
  const { title, body, conversations } = describe(note);
  event.waitUntil(
    self.registration.showNotification(title, {
      body,
      tag: (note && note.notification_id) || undefined,
      data: { conversations: conversations.map((c) => c.conversation_id) },
    }),
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(
    self.clients.matchAll({ type: "window", includeUncontrolled: true }).then((windows) => {
      const open = windows.find((w) => new URL(w.url).origin === self.location.origin);
      return open ? open.focus() : self.clients.openWindow("/");
    }),
  );
});
