// Reply Guard admin: working the queue from the keyboard, and who else has a case open.
// Loaded by the queue and case pages; both work without it (every action is a plain form or link).
"use strict";

(function () {
  var help = document.getElementById("shortcuts");

  // A shortcut never fires while the user types: in a text field, a text area, a select or an
  // editable element, nor while an input method composes (Chinese input), nor with a modifier key.
  function typing(el) {
    if (!el || el === document.body) return false;
    if (el.isContentEditable) return true;
    var tag = el.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT") return true;
    if (tag === "INPUT") return !/^(button|submit|reset|checkbox|radio|image|hidden)$/i.test(el.type);
    return false;
  }

  // The queue: j / k move between the cases (Enter opens the focused one).
  function moveInList(step) {
    var links = Array.prototype.slice.call(document.querySelectorAll("table.queue a.case-link"));
    if (!links.length) return false;
    var i = links.indexOf(document.activeElement);
    var to = i < 0 ? (step > 0 ? 0 : links.length - 1) : Math.min(Math.max(i + step, 0), links.length - 1);
    links.forEach(function (link, n) { link.closest("tr").classList.toggle("current", n === to); });
    links[to].focus();
    return true;
  }

  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    // Ctrl+Enter (Cmd+Enter) in the reply box sends it; a plain Enter only starts a new line.
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && t.matches && t.matches("textarea[data-ctrl-enter]")) {
      ev.preventDefault();
      if (t.form.reportValidity()) t.form.requestSubmit();
      return;
    }
    if (ev.defaultPrevented || ev.ctrlKey || ev.metaKey || ev.altKey || ev.isComposing || ev.keyCode === 229) return;
    if (ev.key === "Escape") {
      if (typing(t)) t.blur();
      else if (help && help.open) help.open = false;
      return;
    }
    if (typing(t) || ev.repeat) return;
    var key = ev.key;
    if (key === "?") {
      if (help) {
        ev.preventDefault();
        help.open = !help.open;
      }
      return;
    }
    if (!/^[a-z]$/.test(key)) return;
    if ((key === "j" || key === "k") && moveInList(key === "j" ? 1 : -1)) {
      ev.preventDefault();
      return;
    }
    var el = document.querySelector('[data-key="' + key + '"]');
    if (!el) return;
    ev.preventDefault();
    if (el.tagName === "TEXTAREA" || el.tagName === "INPUT") {
      el.focus();
      var end = el.value.length;
      el.setSelectionRange(end, end);
    } else {
      el.click();
    }
  });

  // Sending a draft the guard escalated asks first (by mouse or by key).
  document.addEventListener("submit", function (ev) {
    var button = ev.submitter;
    if (button && button.dataset.confirm && !window.confirm(button.dataset.confirm)) ev.preventDefault();
  });

  // Presence: while a waiting case is open, tell the server every 15 s and show who else has it open.
  var presence = document.getElementById("presence");
  if (!presence || !presence.dataset.url) return;
  var url = presence.dataset.url;
  var csrf = presence.dataset.csrf;
  var timer = null;

  function beat() {
    fetch(url, {
      method: "POST",
      body: new URLSearchParams({ op: "here" }),
      headers: { "X-CSRF-Token": csrf },
      credentials: "same-origin",
    })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (body) {
        if (body.state && body.state !== "pending") {
          presence.textContent = "This case was just resolved" +
            (body.resolved_by ? " by " + body.resolved_by : "") + ": reload the page to see what was done.";
          presence.classList.add("others");
          clearInterval(timer);
          return;
        }
        var others = body.others || [];
        presence.textContent = others.length
          ? "Also open now by " + others.join(", ")
          : "Nobody else has this case open.";
        presence.classList.toggle("others", others.length > 0);
        presence.dataset.updated = String(Date.now());
      })
      .catch(function () {});
  }

  timer = setInterval(beat, Number(presence.dataset.interval || 15000));
  window.addEventListener("pageshow", function (ev) { if (ev.persisted) beat(); });
  window.addEventListener("pagehide", function () {
    if (navigator.sendBeacon) navigator.sendBeacon(url, new URLSearchParams({ op: "leave", csrf_token: csrf }));
  });
})();
