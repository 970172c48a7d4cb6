// Audit items: mark with one key. y = right, n = wrong, 2/1/0 choose the corrected grade first.
// Keys never fire while typing in a field or with a modifier held.
"use strict";

(function () {
  var form = document.getElementById("audit-form");
  if (!form) return;
  function typing(el) {
    return el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName)) && el.type !== "radio";
  }
  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.repeat || typing(ev.target)) return;
    var button = null;
    if (ev.key === "y") button = document.getElementById("mark-right");
    else if (ev.key === "n") button = document.getElementById("mark-wrong");
    else if (/^[012]$/.test(ev.key)) {
      var radio = form.querySelector('input[name=grade][data-key="' + ev.key + '"]');
      if (radio) { radio.checked = true; ev.preventDefault(); }
      return;
    }
    if (button) {
      ev.preventDefault();
      form.requestSubmit(button);
    }
  });
})();
