// Test-only: the page's WebSocket frames and HTTP calls, with the browser's clock, kept in
// window.__wire (the last 400) for the failure report of the web client's tests (tokens in URLs
// are left out); the open sockets in window.__sockets, for a test to drop them; and while
// window.__held is true, every new socket goes to a closed port instead (a network that is
// down for the page's sockets only).
(() => {
  const wire = (window.__wire = []);
  const sockets = (window.__sockets = new Set());
  const note = (what) => {
    wire.push(`${new Date().toISOString().slice(11, 23)} ${what.slice(0, 240)}`);
    if (wire.length > 400) wire.shift();
  };
  const path = (url) => String(url).replace(/^[a-z]+:\/\/[^/]+/, "").replace(/token=[^&]*/, "token=…");
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(url, ...rest) {
      super(window.__held ? "ws://127.0.0.1:9/held" : url, ...rest);
      note(`ws connect ${path(url)}`);
      sockets.add(this);
      this.addEventListener("open", () => note("ws open"));
      this.addEventListener("message", (e) => note(`< ${e.data}`));
      this.addEventListener("close", (e) => {
        sockets.delete(this);
        note(`ws closed ${e.code} ${e.reason}`);
      });
    }
    send(data) {
      note(`> ${data}`);
      return super.send(data);
    }
  };
  const nativeFetch = window.fetch.bind(window);
  window.fetch = async (input, init) => {
    const what = `${(init && init.method) || "GET"} ${path(typeof input === "string" ? input : input.url)}`;
    note(`http ${what}`);
    try {
      const response = await nativeFetch(input, init);
      note(`http ${response.status} ${what}`);
      return response;
    } catch (error) {
      note(`http failed ${what}: ${error}`);
      throw error;
    }
  };
})();
