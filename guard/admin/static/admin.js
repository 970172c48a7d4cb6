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
        markRows();
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

  // The rows the preview's problems name ("row 3: ..."): marked invalid where the user sees them.
  function markRows() {
    var body = preview.querySelector(".preview-body");
    var bad = body && body.dataset.badRows ? body.dataset.badRows.split(" ") : [];
    form.querySelectorAll("tr.band-row").forEach(function (row) {
      var wrong = bad.indexOf(row.dataset.row) >= 0;
      row.classList.toggle("invalid", wrong);
      row.querySelectorAll("input").forEach(function (el) {
        if (wrong) el.setAttribute("aria-invalid", "true");
        else el.removeAttribute("aria-invalid");
      });
    });
  }

  // Moving a band's upper edge moves the next band's lower edge with it (no gap, no overlap).
  // Only to a value: clearing an edge (to type a new one) never blanks the next band's edge.
  form.querySelectorAll("input[data-band-hi]").forEach(function (hi) {
    hi.addEventListener("input", function () {
      var next = form.querySelector('input[data-band-lo="' + (Number(hi.dataset.bandHi) + 1) + '"]');
      if (next && next.value !== "" && hi.value.trim() !== "") next.value = hi.value;
    });
  });

  form.addEventListener("input", function (ev) {
    if (ev.target.matches("textarea[data-template]")) refreshSamples();
    else refreshPreview();
  });
  form.addEventListener("change", function (ev) {
    if (ev.target.matches("select")) refreshPreview();
  });

  // The band buttons and the confirmation post the whole form (they work without this file); keep
  // the place on the page: the server answers with the bands (#bands) or the confirmation in view.
  var confirmBox = document.getElementById("confirm");
  if (confirmBox) confirmBox.scrollIntoView({ block: "start" });
})();
