// Reply Guard playground: score while showing progress. The page works without this file (the form
// posts and the page comes back when everything is scored); with it, the same form is posted with
// fetch and the server streams NDJSON lines: {"progress": [done, total]} ... then {"html": page}.
"use strict";

(function () {
  var SEPARATOR = /^[ \t]*-{3,}[ \t]*$/m;

  function countReplies(text) {
    var blocks = text.split(new RegExp(SEPARATOR.source, "gm")).map(function (b) { return b.trim(); });
    while (blocks.length && !blocks[blocks.length - 1]) blocks.pop();
    while (blocks.length && !blocks[0]) blocks.shift();
    return blocks.length;
  }

  function swapPage(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    var main = document.querySelector("main");
    var fresh = doc.querySelector("main");
    if (!main || !fresh) return;
    main.replaceChildren.apply(main, Array.from(fresh.childNodes));
    document.title = doc.title;
    var result = document.getElementById("result");
    if (result) result.scrollIntoView({ block: "start" });
  }

  function showProgress(done, total) {
    var box = document.getElementById("pg-progress");
    var bar = document.getElementById("pg-progress-bar");
    var text = document.getElementById("pg-progress-text");
    if (!box) return;
    box.hidden = false;
    bar.max = Math.max(total, 1);
    bar.value = done;
    text.textContent = "Scoring… " + done + " of " + total;
  }

  function fail(form, message) {
    var text = document.getElementById("pg-progress-text");
    if (text) text.textContent = message;
    form.setAttribute("aria-busy", "false");
    form.querySelectorAll("button[type=submit]").forEach(function (b) { b.disabled = false; });
  }

  async function readStream(response, form) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    for (;;) {
      var chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      var lines = buffer.split("\n");
      buffer = lines.pop();
      for (var i = 0; i < lines.length; i++) {
        if (!lines[i]) continue;
        var msg = JSON.parse(lines[i]);
        if (msg.progress) showProgress(msg.progress[0], msg.progress[1]);
        else if (msg.html) { swapPage(msg.html); return; }
        else if (msg.error) { fail(form, msg.error); return; }
      }
    }
    fail(form, "The answer was cut off. Try again.");
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form || form.id !== "playground-form" || !window.fetch || !window.TextDecoder) return;
    ev.preventDefault();
    var data = new FormData(form);
    if (ev.submitter && ev.submitter.name) data.append(ev.submitter.name, ev.submitter.value);
    form.setAttribute("aria-busy", "true");
    form.querySelectorAll("button[type=submit]").forEach(function (b) { b.disabled = true; });
    showProgress(0, countReplies(form.elements.replies.value));
    fetch(form.action, {
      method: "POST",
      body: data,
      credentials: "same-origin",
      headers: { "X-Playground-Stream": "1" },
    })
      .then(function (r) {
        var type = r.headers.get("content-type") || "";
        if (type.indexOf("application/x-ndjson") === 0) return readStream(r, form);
        return r.text().then(swapPage); // errors next to the fields, or an error page
      })
      .catch(function () { fail(form, "The guard did not answer. Try again."); });
  });

  document.addEventListener("input", function (ev) {
    if (ev.target && ev.target.id === "pg-replies") {
      var out = document.getElementById("reply-count");
      if (out) out.textContent = String(countReplies(ev.target.value));
    }
  });
})();
