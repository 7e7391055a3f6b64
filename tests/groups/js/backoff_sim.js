// Simulated clients running the real browser client (dwebsocket.js) in virtual time:
// a fake WebSocket stands for the server, up or down; timers and Math.random are replaced
// (seeded), so a run is exact and repeatable. Used by tests/groups/test_client_backoff.py
// inside Chromium. simulate(source, {clients, downMs, seed}) -> results.
function simulate(source, config) {
  const clients = config.clients, downMs = config.downMs;
  let now = 0, seq = 0;
  const heap = [];
  function push(t, id, fn) {
    heap.push({ t, id, fn });
    let i = heap.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (before(heap[p], heap[i])) break;
      [heap[p], heap[i]] = [heap[i], heap[p]];
      i = p;
    }
  }
  function before(a, b) { return a.t < b.t || (a.t === b.t && a.id < b.id); }
  function pop() {
    const top = heap[0], last = heap.pop();
    if (heap.length) {
      heap[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < heap.length && before(heap[l], heap[m])) m = l;
        if (r < heap.length && before(heap[r], heap[m])) m = r;
        if (m === i) break;
        [heap[m], heap[i]] = [heap[i], heap[m]];
        i = m;
      }
    }
    return top;
  }
  const cancelled = new Set();
  const fake = {
    setTimeout(fn, ms) { const id = ++seq; push(now + Math.max(0, ms || 0), id, fn); return id; },
    clearTimeout(id) { cancelled.add(id); },
  };
  let state = config.seed >>> 0; // mulberry32
  const random = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  let up = true;
  const open = new Set();
  const handshakes = []; // times (ms) of accepted handshakes after the kill
  let killed = Infinity;
  class FakeWebSocket {
    constructor() {
      this.readyState = 0;
      fake.setTimeout(() => {
        if (this.readyState !== 0) return;
        if (!up) { this.readyState = 3; this.onclose({ code: 1006, reason: "" }); return; }
        this.readyState = 1;
        open.add(this);
        if (now >= killed) handshakes.push(now);
        this.onopen();
      }, up ? 20 : 1); // a handshake's round trips; a refused connection at once
    }
    send(data) {
      if (data === '{"dws":"ping"}') {
        fake.setTimeout(() => this.readyState === 1 && this.onmessage({ data: '{"dws":"pong"}' }), 1);
      }
    }
    close() { this.readyState = 3; open.delete(this); }
  }
  const root = { WebSocket: FakeWebSocket, location: undefined, URL };
  const realSetTimeout = globalThis.setTimeout, realClearTimeout = globalThis.clearTimeout;
  const realRandom = Math.random, realNow = Date.now;
  globalThis.setTimeout = fake.setTimeout; globalThis.clearTimeout = fake.clearTimeout;
  Math.random = random; Date.now = () => now;
  try {
    new Function("globalThis", source)(root);
    const sockets = [];
    for (let i = 0; i < clients; i++) sockets.push(new root.dwebsocket.Socket("ws://sim.invalid/feed/"));
    const run = (until, stop) => {
      while (heap.length && heap[0].t <= until && !(stop && stop())) {
        const task = pop();
        now = task.t;
        if (!cancelled.delete(task.id)) task.fn();
      }
      now = Math.max(now, until);
    };
    run(60000, () => open.size === clients);
    if (open.size !== clients) throw new Error("not all connected at first");
    run(now + 60000); // settle
    // The server dies: every connection drops at once; it is back downMs later.
    killed = now;
    up = false;
    for (const ws of [...open]) { ws.readyState = 3; open.delete(ws); ws.onclose({ code: 1006, reason: "" }); }
    run(killed + downMs);
    up = true;
    const restart = now;
    run(restart + 300000, () => open.size === clients);
    handshakes.sort((a, b) => a - b);
    const t99 = handshakes[Math.ceil(0.99 * clients) - 1] - restart;
    const tAll = handshakes[clients - 1] - restart;
    let peak = 0; // most handshakes within any 1-second window
    for (let i = 0, j = 0; i < handshakes.length; i++) {
      while (handshakes[i] - handshakes[j] >= 1000) j++;
      peak = Math.max(peak, i - j + 1);
    }
    return { clients, down_s: downMs / 1000, back: handshakes.length, t99_s: t99 / 1000, all_s: tAll / 1000, peak_per_s: peak };
  } finally {
    globalThis.setTimeout = realSetTimeout; globalThis.clearTimeout = realClearTimeout;
    Math.random = realRandom; Date.now = realNow;
  }
}
