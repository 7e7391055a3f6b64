// The chat page's client: one WebSocket, reconnected with capped exponential backoff
// (with jitter, so that a restarted server is not hit by every tab at the same instant),
// and the connection state always on screen.
(function () {
  "use strict";

  const BACKOFF_FIRST = 500;    // ms before the first reconnect attempt
  const BACKOFF_MAX = 8000;     // ms, the longest wait between two attempts
  const TYPING_EVERY = 2000;    // ms between two typing notices while typing
  const TYPING_SHOWN = 3500;    // ms a typing notice stays on screen

  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const room = body.dataset.room;
  const NAME = /^[\p{L}\p{N}_ .-]{1,24}$/u;  // what the server accepts (views.NAME)
  const params = new URLSearchParams(location.search);
  let name = [params.get("name"), localStorage.getItem("chat.name")]
    .map((candidate) => (candidate || "").trim())
    .find((candidate) => NAME.test(candidate)) ||
    "guest-" + Math.floor(1000 + Math.random() * 9000);

  let ws = null;
  let attempt = 0;          // failed attempts since the last successful open
  let retryTimer = null;
  let countdown = null;
  let mySid = null;
  let welcomed = false;     // the current socket has had its welcome
  let joinedOnce = false;   // some socket of this page had one
  let lastTyping = 0;
  const shown = new Set();  // ids of the messages on screen
  const typers = new Map(); // name -> timer that hides the notice

  $("name").value = name;

  function setState(state, text) {
    body.dataset.state = state;
    $("status").textContent = text;
    const open = state === "open";
    $("text").disabled = !open;
    $("send").disabled = !open;
  }

  function url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws/${encodeURIComponent(room)}/?name=${encodeURIComponent(name)}`;
  }

  function connect() {
    clearTimeout(retryTimer);
    clearInterval(countdown);
    setState("connecting", attempt ? `reconnecting (attempt ${attempt + 1})…` : "connecting…");
    const socket = new WebSocket(url());
    ws = socket;
    socket.onopen = () => {
      attempt = 0;
      setState("open", "connected");
    };
    socket.onmessage = (event) => {
      let data;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      handle(data);
    };
    socket.onclose = (event) => {
      if (ws !== socket) return;   // replaced on purpose (rename)
      ws = null;
      const why = event.code === 1001 ? "server went away" :
        event.code === 1006 ? "connection lost" : `closed (${event.code})`;
      if (welcomed) notice(`Disconnected: ${why}. Reconnecting…`);
      welcomed = false;
      retry(why);
    };
  }

  function retry(why) {
    // Exponential backoff, capped, with "equal jitter": half fixed, half random.
    const ceiling = Math.min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** attempt);
    const delay = ceiling / 2 + Math.random() * ceiling / 2;
    attempt += 1;
    const due = Date.now() + delay;
    const tick = () => {
      const left = Math.max(0, Math.ceil((due - Date.now()) / 1000));
      setState(navigator.onLine === false ? "offline" : "closed",
        `${why}; retrying in ${left} s`);
    };
    tick();
    countdown = setInterval(tick, 250);
    retryTimer = setTimeout(connect, delay);
  }

  function handle(data) {
    switch (data.type) {
      case "welcome":
        mySid = data.sid;
        for (const message of data.history) show(message);
        notice(joinedOnce ? `Reconnected to #${data.room}.`
          : `You joined #${data.room} as ${data.user}.`);
        joinedOnce = true;
        welcomed = true;
        members(data.members);
        break;
      case "message":
        stopTyping(data.user);
        show(data);
        break;
      case "join":
      case "leave":
        members(data.members);
        if (data.sid !== mySid) notice(`${data.user} ${data.type === "join" ? "joined" : "left"}.`);
        break;
      case "typing":
        if (data.sid !== mySid) startTyping(data.user);
        break;
      case "error":
        notice(`Server: ${data.error}`);
        break;
    }
  }

  function show(message) {
    if (shown.has(message.id)) return;   // history and live delivery may overlap
    shown.add(message.id);
    const item = document.createElement("li");
    item.className = "message" + (message.user === name ? " mine" : "");
    item.dataset.id = message.id;
    const meta = document.createElement("span");
    meta.className = "meta";
    const who = document.createElement("b");
    who.textContent = message.user;
    const time = new Date(message.time);
    meta.append(who, " · " + time.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
    const bubble = document.createElement("span");
    bubble.className = "bubble";
    bubble.textContent = message.text;
    item.append(meta, bubble);
    append(item);
  }

  function notice(text) {
    const item = document.createElement("li");
    item.className = "notice";
    item.textContent = text;
    append(item);
  }

  function append(item) {
    const log = $("log");
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.append(item);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function members(names) {
    const list = $("members");
    list.replaceChildren(...names.map((member) => {
      const item = document.createElement("li");
      item.textContent = member;
      if (member === name) {
        const you = document.createElement("span");
        you.className = "you";
        you.textContent = " (you)";
        item.append(you);
      }
      return item;
    }));
    $("count").textContent = `(${names.length})`;
  }

  function startTyping(user) {
    clearTimeout(typers.get(user));
    typers.set(user, setTimeout(() => stopTyping(user), TYPING_SHOWN));
    renderTyping();
  }

  function stopTyping(user) {
    clearTimeout(typers.get(user));
    typers.delete(user);
    renderTyping();
  }

  function renderTyping() {
    const users = [...typers.keys()];
    $("typing").textContent = users.length === 0 ? "" :
      users.length === 1 ? `${users[0]} is typing…` :
      `${users.slice(0, -1).join(", ")} and ${users[users.length - 1]} are typing…`;
  }

  function send(data) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(data));
      return true;
    }
    return false;
  }

  $("compose").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("text");
    const text = input.value.trim();
    if (text && send({ type: "message", text })) {
      input.value = "";
      lastTyping = 0;   // the next keystroke starts a new typing notice
    }
    input.focus();
  });

  $("text").addEventListener("input", () => {
    const now = Date.now();
    if (now - lastTyping >= TYPING_EVERY && send({ type: "typing" })) lastTyping = now;
  });

  $("rename").addEventListener("submit", (event) => {
    event.preventDefault();
    const wanted = $("name").value.trim();
    if (!NAME.test(wanted)) return;
    name = wanted;
    localStorage.setItem("chat.name", name);
    const old = ws;
    ws = null;
    if (old) old.close(1000, "renamed");
    attempt = 0;
    welcomed = false;
    connect();
  });

  $("switch").addEventListener("submit", (event) => {
    event.preventDefault();
    location.href = `/r/${encodeURIComponent($("goto").value.trim())}/?name=${encodeURIComponent(name)}`;
  });

  // Back online: try now instead of waiting out the backoff.
  window.addEventListener("online", () => { if (!ws) { attempt = 0; connect(); } });

  connect();
})();
