/*! dwebsocket browser client: reconnects, checks the connection, resumes groups where it
 * left off. No dependencies. As a plain script it defines `dwebsocket` globally; as an ES
 * module import dwebsocket.module.js. Protocol and options: dwebsocket's docs (recovery, the
 * dws envelope).
 *
 *   const ws = new dwebsocket.Socket("/chat/lobby/");
 *   ws.on("message", (data, meta) => ...);  // meta.group, meta.position for group messages
 *   ws.on("recoveryfailed", (e) => reloadState());
 *   ws.on("open", () => ws.send("hello"));  // send() is false while not connected
 */
(function (root) {
  "use strict";

  var DEFAULTS = {
    minDelay: 1000, // ms: the first retry waits up to this (full jitter) ...
    maxDelay: 16000, // ... doubling per failed attempt up to this
    stable: 10000, // ms open before a later drop starts the backoff again from minDelay
    pingInterval: 25000, // ms without any message before sending {"dws":"ping"}
    pingTimeout: 10000, // ms then without any message: the connection is dead
    connectTimeout: 10000, // ms for an attempt to open before it is given up
    noRetry: [1008, 4001], // close codes not to reconnect after: policy, session revoked
    // (but 1008 "send queue overflow": the server dropped a member reading too slowly)
    protocols: undefined,
    binaryType: "arraybuffer",
    positions: null, // {group: position} to resume from on the first connection
    // Most characters the positions may take in the URL (dws_since, encoded): past a
    // server's request-line limit every attempt is refused. The groups that got a
    // message longest ago are left out; joined again, they get "recoveryfailed".
    sinceLimit: 2048,
  };
  var HEARTBEAT_CLOSE = 4002; // we gave up on a silent connection

  function Socket(url, options) {
    var o = {};
    for (var k in DEFAULTS) o[k] = DEFAULTS[k];
    for (k in options || {}) o[k] = options[k];
    o.noRetry = o.noRetry.slice(); // this socket's own: a page may add to it
    this.options = o;
    this.url = url;
    // Maps keyed by group names (the application's, its users' even) have no prototype:
    // in a plain object positions["__proto__"] = p is lost, p not being an object.
    this.positions = Object.assign(Object.create(null), o.positions);
    this._recent = Object.create(null); // group -> when its position last moved
    this._tick = 0;
    for (k in this.positions) this._recent[k] = ++this._tick;
    this._leftOut = Object.create(null); // group -> position the last URL had no room for
    this._givenUp = Object.create(null); // group -> position a failed join gave up ...
    this._held = Object.create(null); // ... and its latest, for stateLoaded
    this.attempts = 0;
    this.closed = false; // close() called, or a close code in noRetry
    this.ws = null;
    this._handlers = Object.create(null); // event -> handlers: any name, "constructor" too
    this._timer = null;
    this._beat = null;
    this._patience = 1; // pingTimeout times this: see _alive
    this._connect();
  }

  var proto = Socket.prototype;

  proto.on = function (type, handler) {
    (this._handlers[type] = this._handlers[type] || []).push(handler);
    return this;
  };

  proto.off = function (type, handler) {
    var list = this._handlers[type] || [];
    var i = list.indexOf(handler);
    if (i >= 0) list.splice(i, 1);
    return this;
  };

  proto._emit = function (type, a, b) {
    var live = this._handlers[type] || [];
    var list = live.slice(); // one added meanwhile waits for the next event, and ...
    for (var i = 0; i < list.length; i++) {
      if (live.indexOf(list[i]) < 0) continue; // ... one removed is not called, as in the DOM
      try {
        list[i].call(this, a, b);
      } catch (err) {
        setTimeout(function () {
          throw err; // reported, without stopping the client
        });
      }
    }
  };

  /** True while connected. */
  proto.isOpen = function () {
    return !!this.ws && this.ws.readyState === 1;
  };

  /** Sends now and returns true, or returns false while not connected. */
  proto.send = function (data) {
    if (!this.isOpen()) return false;
    var queued = this.ws.bufferedAmount;
    this.ws.send(data);
    this._queued += this.ws.bufferedAmount - queued; // not to hide a drain from _alive
    return true;
  };

  /** Closes for good: no reconnection. */
  proto.close = function (code, reason) {
    var self = this;
    var ws = this.ws;
    var was = this.closed;
    this.closed = true;
    clearTimeout(this._timer);
    clearTimeout(this._beat);
    var connecting = ws && ws.readyState === 0;
    if (connecting) {
      // Its close would say 1006, as a lost connection's: not ours to hear.
      ws.onopen = ws.onclose = ws.onmessage = null;
      this.ws = null;
    }
    if ((!ws || connecting) && !was) {
      // No socket to say it (waiting to reconnect, or not open yet). Later, as a
      // socket's close comes.
      setTimeout(function () {
        self._emit("close", { code: code || 1000, reason: reason || "", willRetry: false });
      });
    }
    if (ws) {
      try {
        ws.close(code || 1000, reason || "");
      } catch (err) {
        ws.close(); // a code or reason the browser will not send: closed all the same
        throw err;
      }
    }
  };

  /** The page has group's full state (after "recoveryfailed"): resume it again. */
  proto.stateLoaded = function (group) {
    if (group in this._givenUp) {
      delete this._givenUp[group];
      if (this._held[group]) this._saw(group, this._held[group]);
    }
    return this;
  };

  /** Reconnects now if waiting to (e.g. when the browser says it is online again). */
  proto.retryNow = function () {
    if (!this.closed && !this.ws) {
      clearTimeout(this._timer);
      this._connect();
    }
  };

  proto._address = function () {
    var loc = root.location;
    var u = new URL(this.url, loc ? loc.href : undefined);
    if (u.protocol === "http:") u.protocol = "ws:";
    if (u.protocol === "https:") u.protocol = "wss:";
    u.hash = ""; // the browser refuses a WebSocket URL with a fragment: the page's may have one
    u.searchParams.set("dws", "1");
    u.searchParams.delete("dws_since");
    var since = this._since();
    if (since) u.searchParams.set("dws_since", since);
    return u.href;
  };

  /** The positions that fit in sinceLimit, as JSON, the most recent first to be kept. */
  proto._since = function () {
    var self = this;
    var room = this.options.sinceLimit - 6; // "{}", encoded
    var kept = [];
    var names = Object.keys(this.positions).sort(function (a, b) {
      return (self._recent[b] || 0) - (self._recent[a] || 0);
    });
    this._leftOut = Object.create(null);
    for (var i = 0; i < names.length; i++) {
      var pair = JSON.stringify(names[i]) + ":" + JSON.stringify(this.positions[names[i]]);
      room -= new URLSearchParams({ s: pair + "," }).toString().length - 2;
      if (room < 0) this._leftOut[names[i]] = this.positions[names[i]];
      else kept.push(pair);
    }
    return kept.length ? "{" + kept.reverse().join(",") + "}" : "";
  };

  proto._saw = function (group, position) {
    this.positions[group] = position;
    this._recent[group] = ++this._tick;
  };

  proto._connect = function () {
    var self = this;
    var ws;
    try {
      ws = new root.WebSocket(this._address(), this.options.protocols);
    } catch (err) {
      // A malformed URL never gets better: report it and stop. Later: on the first
      // attempt this runs in the constructor, before the page can listen.
      this.closed = true;
      setTimeout(function () {
        self._emit("close", { code: 1006, reason: String(err), willRetry: false });
      });
      return;
    }
    ws.binaryType = this.options.binaryType;
    this.ws = ws;
    this._openedAt = 0;
    ws.onopen = function () {
      clearTimeout(self._timer);
      self._openedAt = Date.now();
      self._alive();
      self._emit("open", { reconnect: self._opened === true }); // not: attempts failed
      self._opened = true;
    };
    ws.onmessage = function (event) {
      self._alive();
      self._receive(event.data);
    };
    ws.onclose = function (event) {
      if (self.ws === ws) self._closed(event.code, event.reason);
    };
    // A server that accepts the connection but never answers the handshake would keep
    // the browser waiting for minutes (and retryNow() with it). In _timer: no retry is
    // due while an attempt is under way.
    this._timer = later(function () {
      if (self.ws === ws && ws.readyState === 0) self._abandon(ws, 1006, "connect timeout");
    }, this.options.connectTimeout);
  };

  /** Stops listening to ws (its close may take minutes) and starts again. */
  proto._abandon = function (ws, code, reason) {
    ws.onopen = ws.onclose = ws.onmessage = null;
    try {
      ws.close(HEARTBEAT_CLOSE, reason);
    } catch (err) {
      /* closing a dead socket may throw: it is gone either way */
    }
    this._closed(code, reason);
  };

  proto._closed = function (code, reason) {
    this.ws = null;
    this._pinged = 0; // the next connection's open answers no ping
    clearTimeout(this._timer);
    clearTimeout(this._beat);
    // Here, not in onclose: a connection the heartbeat or a timeout gave up ends here too.
    if (this._openedAt && Date.now() - this._openedAt >= this.options.stable) this.attempts = 0;
    var overflow = code === 1008 && reason === "send queue overflow";
    if (this.options.noRetry.indexOf(code) >= 0 && !overflow) this.closed = true;
    var delay = this.closed ? null : this._delay();
    this._emit("close", { code: code, reason: reason, willRetry: !this.closed, delay: delay });
    // A "close" handler may have reconnected already (retryNow): a timer would open a
    // second socket, which nothing would ever close.
    if (!this.closed && !this.ws) {
      var self = this;
      this._timer = later(function () {
        self._connect();
      }, delay);
    }
  };

  /** Full jitter: a random wait up to minDelay * 2^attempts, capped at maxDelay. */
  proto._delay = function () {
    var o = this.options;
    var cap = Math.min(o.maxDelay, o.minDelay * Math.pow(2, this.attempts));
    this.attempts++;
    return Math.floor(Math.random() * cap);
  };

  /** Something came: the connection lives; ping after pingInterval of silence.
   * A message counts once all of it came: one slower to come than pingTimeout looks
   * dead, on each reconnection. So each connection given up waits twice as long on the
   * next (16 times at most) until a ping is answered within pingTimeout. The ping goes
   * out after what we sent before it (a large upload): while that drains, wait on. */
  proto._alive = function () {
    var self = this;
    var ws = this.ws;
    var o = this.options;
    if (this._pinged && Date.now() - this._pinged <= o.pingTimeout) this._patience = 1;
    this._pinged = 0;
    clearTimeout(this._beat);
    this._beat = later(function () {
      if (self.ws !== ws || ws.readyState !== 1) return;
      self._queued = ws.bufferedAmount; // what the ping waits behind
      ws.send('{"dws":"ping"}');
      self._pinged = Date.now();
      (function wait() {
        self._beat = later(function () {
          if (self.ws !== ws) return;
          if (ws.bufferedAmount < self._queued) {
            self._queued = ws.bufferedAmount; // some went out: the link lives
            return wait();
          }
          self._patience = Math.min(self._patience * 2, 16);
          self._abandon(ws, HEARTBEAT_CLOSE, "no heartbeat");
        }, o.pingTimeout * self._patience);
      })();
    }, o.pingInterval);
  };

  proto._receive = function (data) {
    var m;
    if (typeof data === "string" && data.lastIndexOf('{"dws"', 0) === 0) {
      try {
        m = JSON.parse(data);
      } catch (err) {
        m = null;
      }
    }
    if (!m || typeof m !== "object" || !("dws" in m)) {
      this._emit("message", data, {});
      return;
    }
    if (m.dws === "msg") {
      if (m.p) {
        if (m.g in this._givenUp) this._held[m.g] = m.p;
        else this._saw(m.g, m.p);
      }
      this._emit("message", "d" in m ? m.d : decode(m.b, this.options.binaryType), { group: m.g, position: m.p });
    } else if (m.dws === "joined") {
      var leftOut = this._leftOut[m.g];
      if (leftOut == null) leftOut = this._givenUp[m.g];
      delete this._leftOut[m.g];
      delete this._givenUp[m.g];
      var failed = m.since != null ? (m.recovered ? null : m.since) : leftOut;
      if (failed != null) {
        // The view sends the full state: resumed from m.p before it came, it never would
        // ("recovered"). Given up until stateLoaded: a first visit (no m.p: no Redis).
        delete this.positions[m.g];
        this._givenUp[m.g] = failed;
        this._held[m.g] = m.p;
      } else if (m.p) this._saw(m.g, m.p);
      var info = { group: m.g, position: m.p, since: m.since, missed: m.missed };
      this._emit("joined", info);
      if (m.since != null) this._emit(m.recovered ? "recovered" : "recoveryfailed", info);
      else if (leftOut != null) {
        // Its position had no room in the URL (or was given up): what it missed is not coming.
        this._emit("recoveryfailed", { group: m.g, position: m.p, since: leftOut, missed: m.missed });
      }
    } else {
      this._emit("dws", m); // pong, and types of later versions
    }
  };

  /** setTimeout, whose delay is a 32-bit integer: a longer one (Infinity: never) fired at
   * once. Waits the longest it can instead, 24.8 days. */
  function later(fn, ms) {
    return setTimeout(fn, Math.min(ms, 2147483647));
  }

  /** A binary group message (base64 in its envelope), as binaryType says binary arrives. */
  function decode(b64, binaryType) {
    var text = atob(b64);
    var bytes = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return binaryType === "blob" ? new Blob([bytes]) : bytes.buffer;
  }

  root.dwebsocket = { Socket: Socket, DEFAULTS: DEFAULTS };
})(typeof globalThis !== "undefined" ? globalThis : this);
