// The HTTP half of the protocol (docs/protocol.md). The token goes in the Authorization
// header, never in a URL.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

// A path segment: ":" and "@" stay as they are (both are allowed in a path, and the gateway
// matches conversation and user ids as sent, without percent-decoding them).
const seg = (value) => encodeURIComponent(value).replace(/%3A/gi, ":").replace(/%40/g, "@");

async function call(method, path, { token, body } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || "invalid", error.message);
  }
  return data;
}

// How long a media fetch waits for a thumbnail (or a member's copy of an image) that the
// server is still making: it answers 404 until then.
const MEDIA_WAIT_MS = 60000;

export function devLogin(userId, deviceId) {
  return call("POST", "/v1/dev/token", { body: { user_id: userId, device_id: deviceId } });
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  get(path) {
    return call("GET", path, { token: this.token });
  }

  post(path, body) {
    return call("POST", path, { token: this.token, body });
  }

  delete(path) {
    return call("DELETE", path, { token: this.token });
  }

  sync(since) {
    const query = since ? `?since=${encodeURIComponent(since)}` : "";
    return this.get(`/v1/sync${query}`);
  }

  conversation(cid) {
    return this.get(`/v1/conversations/${seg(cid)}`);
  }

  history(cid, before) {
    const query = before ? `&before=${before}` : "";
    return this.get(`/v1/conversations/${seg(cid)}/messages?limit=50${query}`);
  }

  receipts(cid) {
    return this.get(`/v1/conversations/${seg(cid)}/receipts`);
  }

  postReceipt(cid, messageId, status) {
    return this.post(`/v1/conversations/${seg(cid)}/receipts`, { message_id: messageId, status });
  }

  presence(userId) {
    return this.get(`/v1/users/${seg(userId)}/presence`);
  }

  openDirect(userId) {
    return this.post("/v1/conversations", { kind: "direct", members: [userId] });
  }

  createGroup(title, members) {
    return this.post("/v1/conversations", { kind: "group", title, members });
  }

  addMembers(cid, userIds) {
    return this.post(`/v1/conversations/${seg(cid)}/members`, { user_ids: userIds });
  }

  removeMember(cid, userId) {
    return this.delete(`/v1/conversations/${seg(cid)}/members/${seg(userId)}`);
  }

  // A direct upload (<= 25 MiB): the file itself as the body, with its type. The media object.
  async uploadMedia(file) {
    const response = await fetch("/v1/media", {
      method: "POST",
      headers: { Authorization: `Bearer ${this.token}`, "Content-Type": file.type || "application/octet-stream" },
      body: file,
      cache: "no-store",
    });
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      const error = (data && data.error) || {};
      throw new ApiError(response.status, error.code || "invalid", error.message);
    }
    return data;
  }

  // The bytes of a media object or its thumbnail, as a Blob. The gateway answers with a 302 to
  // a presigned URL of the object store, which the browser follows without the token (a
  // cross-origin redirect drops Authorization). 404 while the server is still making it: asked
  // again, a little later each time, for up to MEDIA_WAIT_MS.
  async mediaBlob(mediaId, { thumbnail = false } = {}) {
    const path = `/v1/media/${seg(mediaId)}${thumbnail ? "/thumbnail" : ""}`;
    const until = Date.now() + MEDIA_WAIT_MS;
    for (let wait = 300; ; wait = Math.min(wait * 2, 3000)) {
      const response = await fetch(path, { headers: { Authorization: `Bearer ${this.token}` }, cache: "no-store" });
      if (response.ok) return response.blob();
      const data = await response.json().catch(() => null);
      const error = (data && data.error) || {};
      if (response.status !== 404 || Date.now() + wait > until) {
        throw new ApiError(response.status, error.code || "invalid", error.message);
      }
      await new Promise((r) => setTimeout(r, wait));
    }
  }

  webPushKey() {
    return this.get("/v1/push/webpush-key");
  }

  registerPush(deviceId, body) {
    return call("PUT", `/v1/devices/${seg(deviceId)}/push`, { token: this.token, body });
  }

  unregisterPush(deviceId) {
    return this.delete(`/v1/devices/${seg(deviceId)}/push`);
  }
}
