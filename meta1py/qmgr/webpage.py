"""The web page of test mode (``GET /``): captured messages, one message, the queue.

Plain HTML rendered by qmgr, no build step and no external assets: a little JavaScript reads
``GET /messages`` and ``GET /queue`` every second and redraws the lists, and shows a message
(headers, text, MIME parts, SMTP transcript) from ``GET /messages/{id}`` when one is chosen.
Everything shown is inserted as text (``textContent``), never as HTML: captured mail is hostile.
"""

from __future__ import annotations

from typing import Final

PAGE: Final = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>meta1 test mode</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1rem; color: #111; background: #fff; }
h1 { font-size: 1.3rem; } h2 { font-size: 1.1rem; margin-top: 1.5rem; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { text-align: left; padding: 0.25rem 0.5rem; border-bottom: 1px solid #ccc; vertical-align: top; }
tbody tr:hover, tbody tr:focus-within { background: #eef; }
button.link { background: none; border: none; padding: 0; color: #0645ad; text-decoration: underline;
  cursor: pointer; font: inherit; text-align: left; }
pre { background: #f4f4f4; padding: 0.5rem; overflow-x: auto; white-space: pre-wrap; }
.status-delivered { color: #05661e; } .status-bounced { color: #a00; } .status-deferred { color: #8a5a00; }
#view[hidden] { display: none; }
</style>
</head>
<body>
<header><h1>meta1 test mode</h1>
<p>Nothing leaves this machine: every delivery is captured here.
API: <a href="/openapi.json">/openapi.json</a>. <span id="clock" aria-live="polite"></span></p>
</header>
<main>
<section aria-labelledby="h-messages">
<h2 id="h-messages">Captured messages</h2>
<table>
<thead><tr><th scope="col">Time</th><th scope="col">From</th><th scope="col">To</th>
<th scope="col">Subject</th><th scope="col">Kind</th><th scope="col">Status</th></tr></thead>
<tbody id="messages"><tr><td colspan="6">Loading...</td></tr></tbody>
</table>
</section>
<section id="view" aria-labelledby="h-view" hidden>
<h2 id="h-view">Message</h2>
<p><button type="button" id="close">Close</button> <a id="raw" href="#">Raw message</a></p>
<h3>Envelope</h3><pre id="v-envelope"></pre>
<h3>Headers</h3><pre id="v-headers"></pre>
<h3>Text</h3><pre id="v-text"></pre>
<h3>MIME parts</h3><ul id="v-parts"></ul>
<h3>SMTP transcript</h3><pre id="v-transcript"></pre>
</section>
<section aria-labelledby="h-queue">
<h2 id="h-queue">Queue</h2>
<table>
<thead><tr><th scope="col">Queue id</th><th scope="col">From</th><th scope="col">Recipient</th>
<th scope="col">Status</th><th scope="col">Attempts</th><th scope="col">Next attempt</th>
<th scope="col">Last reply</th></tr></thead>
<tbody id="queue"><tr><td colspan="7">Loading...</td></tr></tbody>
</table>
</section>
</main>
<script>
"use strict";
function when(t) { return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : ""; }
function cell(row, text, cls) {
  const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls;
  row.appendChild(td); return td;
}
function empty(body, cols, text) {
  const row = document.createElement("tr"); const td = cell(row, text); td.colSpan = cols;
  body.replaceChildren(row);
}
async function getJSON(url) {
  const r = await fetch(url, {cache: "no-store"});
  if (!r.ok) throw new Error(url + ": " + r.status); return r.json();
}
async function showMessage(id) {
  const m = await getJSON("/messages/" + encodeURIComponent(id));
  document.getElementById("v-envelope").textContent =
    "MAIL FROM:<" + m.envelope.mail_from + ">\\n" +
    m.envelope.rcpt_to.map(a => "RCPT TO:<" + a + ">").join("\\n");
  document.getElementById("v-headers").textContent = m.headers.map(h => h[0] + ": " + h[1]).join("\\n");
  document.getElementById("v-text").textContent = m.text;
  const parts = document.getElementById("v-parts"); parts.replaceChildren();
  for (const p of m.parts) {
    const li = document.createElement("li");
    li.textContent = p.content_type + (p.filename ? " (" + p.filename + ")" : "") + ", " + p.size + " bytes";
    parts.appendChild(li);
  }
  document.getElementById("v-transcript").textContent = m.transcript.map(t => t[0] + ": " + t[1]).join("\\n");
  document.getElementById("raw").href = "/messages/" + encodeURIComponent(id) + "/raw";
  const view = document.getElementById("view"); view.hidden = false;
  document.getElementById("h-view").textContent = "Message: " + (m.subject || "(no subject)");
  document.getElementById("close").focus();
}
document.getElementById("close").addEventListener("click", () => {
  document.getElementById("view").hidden = true;
});
async function refresh() {
  try {
    const c = await getJSON("/clock");
    document.getElementById("clock").textContent = "Clock: " + when(c.now) +
      (c.offset ? " (" + Math.round(c.offset) + " s ahead)" : "");
    const data = await getJSON("/messages");
    const body = document.getElementById("messages");
    if (!data.messages.length) { empty(body, 6, "No message captured yet."); }
    else {
      body.replaceChildren(...data.messages.map(m => {
        const row = document.createElement("tr");
        cell(row, when(m.time)); cell(row, m.from || "<>"); cell(row, m.to.join(", "));
        const s = cell(row, ""); const b = document.createElement("button");
        b.type = "button"; b.className = "link"; b.textContent = m.subject || "(no subject)";
        b.addEventListener("click", () => showMessage(m.id)); s.appendChild(b);
        cell(row, m.kind); cell(row, m.status, "status-" + m.status);
        return row;
      }));
    }
    const q = await getJSON("/queue");
    const qb = document.getElementById("queue");
    const rows = [];
    for (const m of q.messages) for (const r of m.recipients) {
      const row = document.createElement("tr");
      cell(row, m.qid); cell(row, m.from || "<>"); cell(row, r.address); cell(row, r.status);
      cell(row, String(r.attempts)); cell(row, when(r.next_attempt)); cell(row, r.last_reply || "");
      rows.push(row);
    }
    if (rows.length) qb.replaceChildren(...rows); else empty(qb, 7, "The queue is empty.");
  } catch (e) { document.getElementById("clock").textContent = "Cannot reach the API: " + e.message; }
}
refresh(); setInterval(refresh, 1000);
</script>
</body>
</html>
"""
