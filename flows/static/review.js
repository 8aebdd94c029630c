// The review page's keys and buttons. Text from the server is only ever set with textContent.
"use strict";

(() => {
  const cards = Array.from(document.querySelectorAll("article.card"));
  const byKey = new Map(cards.map((c, i) => [c.dataset.key, i]));
  const $ = (id) => document.getElementById(id);
  const who = $("reviewer");
  let cur = -1;

  const reviewer = () => who.value.trim() || "anonymous";
  const saved = localStorage.getItem("voiceface-reviewer");
  if (saved && who.value === "anonymous") who.value = saved;
  const remember = () => {
    localStorage.setItem("voiceface-reviewer", reviewer());
    document.cookie = "voiceface_reviewer=" + encodeURIComponent(reviewer()) + "; path=/; SameSite=Strict";
  };
  who.addEventListener("change", remember);
  who.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === "Escape") {
      remember();
      who.blur(); // back to the cards: the keys work again
      if (cur >= 0) cards[cur].focus({ preventScroll: true });
    }
  });
  remember();

  function toast(message, bad = false) {
    const t = $("toast");
    t.textContent = message;
    t.classList.toggle("bad", bad);
    t.classList.add("show");
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => t.classList.remove("show"), 4000);
  }

  async function post(path, body) {
    const r = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify(body),
    });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(typeof data.detail === "string" ? data.detail : data.message || r.statusText);
    return data;
  }

  function filterLink(a, name, value) {
    a.textContent = value || "";
    a.href = "/?" + new URLSearchParams({ [name]: value || "" }).toString();
  }

  function focus(i) {
    if (!cards.length) return;
    i = Math.max(0, Math.min(cards.length - 1, i));
    if (cur >= 0) cards[cur].classList.remove("focused");
    cur = i;
    const card = cards[cur];
    card.classList.add("focused");
    card.focus({ preventScroll: true });
    card.scrollIntoView({ block: "nearest" });
    filterLink($("f-clip"), "clip", card.dataset.clip);
    filterLink($("f-identity"), "identity", card.dataset.identity);
  }

  function move(step) {
    const next = cur + step;
    if (next >= cards.length && document.body.dataset.next) location.href = document.body.dataset.next;
    else if (next < 0 && document.body.dataset.prev) location.href = document.body.dataset.prev + "#last";
    else focus(next);
  }

  function setState(card, state) {
    const decision = state ? state.decision : "pending";
    card.classList.remove("state-accept", "state-reject", "state-pending");
    card.classList.add("state-" + decision);
    card.querySelector(".decision").textContent = decision;
    card.querySelector(".by").textContent = state ? " by " + state.reviewer : "";
  }

  function addHistory(card, what) {
    const li = document.createElement("li");
    li.textContent = new Date().toISOString().slice(11, 19) + " " + reviewer() + ": " + what;
    const list = card.querySelector(".history");
    list.appendChild(li);
    while (list.children.length > 4) list.removeChild(list.firstChild);
  }

  function showProgress(p) {
    $("p-reviewed").textContent = p.reviewed;
    $("p-remaining").textContent = p.remaining;
    $("p-queued").textContent = p.queued;
    $("p-accepted").textContent = p.accepted;
    $("p-rejected").textContent = p.rejected;
    $("p-bar").max = p.queued || 1;
    $("p-bar").value = p.reviewed;
    document.title = "voiceface review: " + p.remaining + " to go";
    const list = $("p-reviewers");
    list.replaceChildren(
      ...Object.entries(p.reviewers).map(([name, c]) => {
        const li = document.createElement("li");
        li.textContent = name + ": " + c.accept + " accepted, " + c.reject + " rejected";
        return li;
      }),
    );
  }

  async function decide(decision) {
    const card = cards[cur];
    if (!card) return;
    try {
      const d = await post("/api/decide", { key: card.dataset.key, decision, reviewer: reviewer() });
      setState(card, d.state);
      addHistory(card, decision);
      showProgress(d.progress);
      if (cards[cur] === card) focus(cur + 1);
    } catch (e) {
      toast("not saved: " + e.message, true);
    }
  }

  async function undo() {
    try {
      const d = await post("/api/undo", { reviewer: reviewer() });
      if (!d.action) return toast("nothing of yours to undo");
      for (const key of d.keys) {
        if (byKey.has(key)) {
          setState(cards[byKey.get(key)], d.states[key]);
          addHistory(cards[byKey.get(key)], "undo");
        }
      }
      showProgress(d.progress);
      const first = d.keys.find((k) => byKey.has(k));
      if (first !== undefined) focus(byKey.get(first));
      const what = d.keys.length === 1 ? d.keys[0] : d.keys.length + " windows (" + d.action.target + ")";
      toast("undid " + d.action.decision + " of " + what + (first === undefined ? " (not on this page)" : ""));
    } catch (e) {
      toast("undo failed: " + e.message, true);
    }
  }

  async function bulk(decision, scope) {
    const card = cards[cur];
    if (!card) return;
    const name = scope === "clip" ? card.dataset.clip : card.dataset.identity;
    try {
      const d = await post("/api/bulk", { [scope]: name, decision, reviewer: reviewer() });
      for (const key of d.keys) {
        if (byKey.has(key)) setState(cards[byKey.get(key)], { decision, reviewer: reviewer() });
      }
      showProgress(d.progress);
      toast(decision + "ed " + d.keys.length + " windows of " + scope + " " + name + " (u undoes)");
    } catch (e) {
      toast("not saved: " + e.message, true);
    }
  }

  function play(selector) {
    const audio = cards[cur] && cards[cur].querySelector(selector);
    if (!audio) return;
    document.querySelectorAll("audio").forEach((a) => a !== audio && a.pause());
    if (audio.paused) {
      audio.currentTime = 0;
      audio.play().catch((e) => toast("cannot play: " + e.message, true));
    } else audio.pause();
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.target.closest("input, select, textarea")) return;
    const actions = {
      a: () => decide("accept"),
      r: () => decide("reject"),
      j: () => move(1),
      k: () => move(-1),
      u: () => undo(),
      " ": () => play(".a1"),
      c: () => play(".a4"),
    };
    const action = actions[e.key];
    if (!action) return;
    e.preventDefault();
    action();
  });

  cards.forEach((card, i) => {
    card.addEventListener("click", (e) => {
      if (!e.target.closest("audio, a")) focus(i);
      const b = e.target.closest("button[data-decide]");
      if (b) decide(b.dataset.decide);
    });
  });
  document.querySelectorAll("button[data-bulk]").forEach((b) => {
    b.addEventListener("click", () => bulk(b.dataset.bulk, b.dataset.scope));
  });

  $("done").addEventListener("click", async () => {
    try {
      const d = await post("/api/done", { reviewer: reviewer() });
      toast(d.message);
    } catch (e) {
      toast(e.message, true);
    }
  });

  $("queue-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.target;
    const name = form.elements.name.value.trim();
    if (!name) return;
    try {
      const d = await post("/api/queue", { [form.elements.scope.value]: name, reviewer: reviewer() });
      toast("queued " + d.queued + " windows");
      location.href = "/?" + new URLSearchParams({ [form.elements.scope.value]: name }).toString();
    } catch (e) {
      toast("not queued: " + e.message, true);
    }
  });

  if (location.hash === "#last") focus(cards.length - 1);
  else {
    const pending = cards.findIndex((c) => c.classList.contains("state-pending"));
    focus(pending >= 0 ? pending : 0);
  }
})();
