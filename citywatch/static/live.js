// Live updates: Server-Sent Events from GET /api/stream, with polling as the fallback.
//
// EventSource reconnects by itself after the server restarts; while it is down the status says
// "disconnected". If the stream cannot be used at all (an old server, a proxy that refuses it),
// EventSource gives up (readyState CLOSED): then the page polls the lists every POLL_MS and tries
// the stream again every SSE_RETRY_MS. After every (re)connection the server sends `hello` and the
// page fetches the lists once, so nothing that happened while it was away is missed.

const POLL_MS = 2000;
const SSE_RETRY_MS = 10000;

export class Live {
  /**
   * handlers: {alert(row), workOrder(row), resync() -> Promise, status(mode)}
   * mode is 'connecting', 'live' (stream open), 'polling' (fallback answering) or 'down'.
   */
  constructor(url, handlers) {
    this.url = url;
    this.h = handlers;
    this.es = null;
    this.mode = 'connecting';
    this.pollTimer = null;
    this.retryTimer = null;
  }

  start() {
    if (typeof window.EventSource !== 'function') {
      this.startPolling();
      return;
    }
    this.open();
  }

  open() {
    clearTimeout(this.retryTimer);
    const es = new EventSource(this.url);
    this.es = es;
    es.addEventListener('hello', () => {
      this.stopPolling();
      this.setMode('live');
      this.h.resync().catch(() => {});
    });
    es.addEventListener('alert', (e) => this.h.alert(parse(e.data)));
    es.addEventListener('work_order', (e) => this.h.workOrder(parse(e.data)));
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) {
        // Refused for good (not an event stream): poll, and try the stream again later.
        this.es = null;
        this.startPolling();
        this.retryTimer = setTimeout(() => this.open(), SSE_RETRY_MS);
      } else {
        // Reconnecting by itself; meanwhile polls keep the page current if the server answers
        // them, and say so if it does not.
        if (this.mode === 'live' || this.mode === 'connecting') this.setMode('down');
        this.startPolling();
      }
    };
  }

  startPolling() {
    if (this.pollTimer) return;
    const tick = async () => {
      let ok = false;
      try {
        ok = await this.h.resync();
      } catch {
        ok = false;
      }
      if (!this.pollTimer) return;
      if (this.mode !== 'live') this.setMode(ok ? 'polling' : 'down');
      this.pollTimer = setTimeout(tick, POLL_MS);
    };
    this.pollTimer = setTimeout(tick, 0);
  }

  stopPolling() {
    clearTimeout(this.pollTimer);
    this.pollTimer = null;
  }

  setMode(mode) {
    if (mode === this.mode) return;
    this.mode = mode;
    this.h.status(mode);
  }
}

function parse(data) {
  try {
    return JSON.parse(data);
  } catch {
    return null;
  }
}
