// Reply Guard admin pages: small progressive enhancements. Every page works without this file.
"use strict";

(function () {
  function debounce(fn, ms) {
    var timer = null;
    return function () {
      clearTimeout(timer);
      timer = setTimeout(fn, ms);
    };
  }

  // Filters that apply on change.
  document.querySelectorAll("select[data-autosubmit]").forEach(function (el) {
    el.addEventListener("change", function () { el.form.submit(); });
  });

  var form = document.getElementById("policy-form");
  if (!form) return;
  var csrf = form.querySelector("input[name=csrf_token]").value;

  function post(url) {
    var data = new FormData(form);
    return fetch(url, {
      method: "POST",
      body: new URLSearchParams(data),
      headers: { "X-CSRF-Token": csrf },
      credentials: "same-origin",
    });
  }

  // The preview on recent traffic: server-rendered (and escaped) HTML, refreshed as bands change.
  var preview = document.getElementById("preview");
  var refreshPreview = debounce(function () {
    preview.setAttribute("aria-busy", "true");
    post(form.dataset.previewUrl)
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        preview.replaceChildren.apply(preview, Array.from(doc.body.childNodes));
        preview.setAttribute("aria-busy", "false");
        preview.dataset.updated = String(Date.now());
      })
      .catch(function () { preview.setAttribute("aria-busy", "false"); });
  }, 350);

  // Live rendering of the follow-up and holding-message templates for the sample case.
  var refreshSamples = debounce(function () {
    post(form.dataset.samplesUrl)
      .then(function (r) { return r.json(); })
      .then(function (body) {
        Object.keys(body.samples).forEach(function (key) {
          var el = form.querySelector('[data-sample="' + key + '"]');
          if (!el) return;
          var s = body.samples[key];
          el.textContent = s.error ? s.error : s.text;
          el.classList.toggle("bad", Boolean(s.error));
        });
      });
  }, 300);

  // Moving a band's upper edge moves the next band's lower edge with it (no gap, no overlap).
  form.querySelectorAll("input[data-band-hi]").forEach(function (hi) {
    hi.addEventListener("input", function () {
      var next = form.querySelector('input[data-band-lo="' + (Number(hi.dataset.bandHi) + 1) + '"]');
      if (next && next.value !== "") next.value = hi.value;
    });
  });

  form.addEventListener("input", function (ev) {
    if (ev.target.matches("textarea[data-template]")) refreshSamples();
    else refreshPreview();
  });
  form.addEventListener("change", function (ev) {
    if (ev.target.matches("select")) refreshPreview();
  });

  // Reveal one more (hidden) band row.
  var add = document.getElementById("add-band");
  if (add) {
    add.hidden = false;
    add.addEventListener("click", function () {
      var row = form.querySelector("tr.band-row[hidden]");
      if (row) row.hidden = false;
    });
  }
})();
