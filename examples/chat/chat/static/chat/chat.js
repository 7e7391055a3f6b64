// The chat page's client: dwebsocket's browser client (dwebsocket.js, loaded before this)
// keeps one WebSocket open -- reconnecting with jittered exponential backoff, so that a
// restarted server is not hit by every tab at the same instant, and resuming the room where
// it left off -- and this file keeps the connection state always on screen.
(function () {
  "use strict";

  const TYPING_EVERY = 2000;    // ms between two typing notices while typing
  const TYPING_SHOWN = 3500;    // ms a typing notice stays on screen

  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const room = body.dataset.room;
  const NAME = /^[\p{L}\p{N}_ .-]{1,24}$/u;  // what the server accepts (views.NAME)
  const params = new URLSearchParams(location.search);
  // A logged-in page chats under its account's name (the server ignores ?name= then).
  let name = [body.dataset.user, params.get("name"), localStorage.getItem("chat.name")]
    .map((candidate) => (candidate || "").trim())
    .find((candidate) => NAME.test(candidate)) ||
    "guest-" + Math.floor(1000 + Math.random() * 9000);

  let ws = null;             // the dwebsocket.Socket
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
    return `/ws/${encodeURIComponent(room)}/?name=${encodeURIComponent(name)}`;
  }

  function connect(positions) {
    setState("connecting", "connecting…");
    const socket = new dwebsocket.Socket(url(), { positions });
    ws = socket;
    socket.on("open", (event) => {
      clearInterval(countdown);
      setState("open", "connected");
    });
    socket.on("message", (raw) => {
      let data;
      try { data = JSON.parse(raw); } catch (e) { return; }
      handle(data);
      // The welcome carries the room's state (its history, when the room's own could not
      // be recovered): from now on a reconnection resumes the room after it. Until then
      // (the connection lost before the welcome came) each one gets the welcome again.
      if (data.type === "welcome") socket.stateLoaded(`chat.${room}`);
    });
    socket.on("close", (event) => {
      // 4001: this page's session ended (logged out, in this tab or another one): the
      // client does not reconnect, the page says so.
      const why = event.code === 1001 ? "server went away" :
        event.code === 1006 ? "connection lost" :
        event.code === 4001 ? "logged out (4001)" : `closed (${event.code})`;
      if (welcomed) notice(`Disconnected: ${why}. Reconnecting…`);
      welcomed = false;
      clearInterval(countdown);
      if (!event.willRetry) {
        setState(event.code === 4001 ? "revoked" : "closed", why);
        if (event.code === 4001) notice("Your session ended: log in again to chat.");
        // 1008: the server refused this page (a guest asking for an account's name).
        else if (event.code === 1008 && event.reason) notice(`Closed: ${event.reason}.`);
        return;
      }
      const due = Date.now() + event.delay;
      const tick = () => {
        const left = Math.max(0, Math.ceil((due - Date.now()) / 1000));
        setState(navigator.onLine === false ? "offline" : "closed",
          `${why}; retrying in ${left} s`);
      };
      tick();
      countdown = setInterval(tick, 250);
    });
  }

  function handle(data) {
    switch (data.type) {
      case "welcome":
        mySid = data.sid;
        name = data.user;   // a logged-in page's is its account's, which NAME may not match
        // recovered: what was said meanwhile came from the room's history, just before.
        body.dataset.recovered = data.recovered;
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
    // A message said between the server's join and its welcome arrives before the
    // welcome's history: each goes before the messages said after it (ids grow).
    const messages = $("log").querySelectorAll(".message");
    let next = null;
    for (let i = messages.length - 1; i >= 0 && Number(messages[i].dataset.id) > message.id; i--) {
      next = messages[i];
    }
    if (next) next.before(item); else append(item);
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
    return ws.send(JSON.stringify(data));   // false while reconnecting
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
    old.close(1000, "renamed");
    welcomed = false;
    connect(old.positions);   // the new socket resumes where this one is
  });

  $("switch").addEventListener("submit", (event) => {
    event.preventDefault();
    location.href = `/r/${encodeURIComponent($("goto").value.trim())}/?name=${encodeURIComponent(name)}`;
  });

  // Back online: try now instead of waiting out the backoff.
  window.addEventListener("online", () => ws.retryNow());

  connect();
})();
