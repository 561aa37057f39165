// jitgate console: countdowns to expiry and polled fragments. No framework, no build.
// [data-expires="ISO time"]  shows mm:ss left, "expired" after
// [data-poll="URL"]          replaced with the HTML fragment at URL every 2 s, unless the
//                            person is typing in it (a half-written reason is never lost)
(function () {
  "use strict";
  function pad(n) { return n < 10 ? "0" + n : String(n); }
  function tick() {
    document.querySelectorAll("[data-expires]").forEach(function (el) {
      var left = Math.floor((Date.parse(el.dataset.expires) - Date.now()) / 1000);
      if (isNaN(left)) { return; }
      if (left <= 0) { el.textContent = "expired"; el.classList.add("expired"); return; }
      var h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
      el.textContent = (h ? h + ":" + pad(m) : m) + ":" + pad(s) + " left";
    });
  }
  function busy(el) {
    if (el.contains(document.activeElement) && document.activeElement !== document.body) { return true; }
    return Array.prototype.some.call(el.querySelectorAll("input[type=text], textarea"), function (i) {
      return i.value !== "";
    });
  }
  function poll() {
    document.querySelectorAll("[data-poll]").forEach(function (el) {
      if (busy(el)) { return; }
      fetch(el.dataset.poll, { credentials: "same-origin", headers: { "X-Console-Fragment": "1" } })
        .then(function (resp) {
          if (resp.status === 401) { window.location.reload(); return null; }
          return resp.ok ? resp.text() : null;
        })
        .then(function (html) { if (html !== null && !busy(el)) { el.innerHTML = html; tick(); } })
        .catch(function () { /* the next poll retries */ });
    });
  }
  tick();
  setInterval(tick, 1000);
  setInterval(poll, 2000);
})();
