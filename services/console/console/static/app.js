// The console's only script of its own (CSP: script-src 'self'; no inline code).
(function () {
  "use strict";

  // --- offer countdowns -------------------------------------------------------------------
  function remaining(ms) {
    if (ms <= 0) return "deadline passed";
    var s = Math.floor(ms / 1000), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    if (h >= 48) return Math.floor(h / 24) + " days left";
    if (h > 0) return h + " h " + m + " min left";
    return m + " min " + (s % 60) + " s left";
  }
  function tick() {
    document.querySelectorAll(".countdown[data-deadline]").forEach(function (el) {
      var deadline = Date.parse(el.getAttribute("data-deadline"));
      if (isNaN(deadline)) return;
      var left = deadline - Date.now();
      var out = el.querySelector(".left");
      if (!out) { out = document.createElement("span"); out.className = "left"; el.prepend(out); }
      out.textContent = remaining(left) + " · ";
      el.classList.toggle("late", left < 10 * 60 * 1000);
    });
  }

  // --- the officer's draft survives an expired session (kept in this tab only) -------------
  var SKIP = { csrf_token: true };
  function draftKey(form) { return "draft:" + form.getAttribute("data-draft"); }
  function saveDraft(form) {
    var data = {};
    new FormData(form).forEach(function (value, name) {
      if (SKIP[name]) return;
      (data[name] = data[name] || []).push(String(value));
    });
    sessionStorage.setItem(draftKey(form), JSON.stringify(data));
  }
  function restoreDraft(form) {
    var raw = sessionStorage.getItem(draftKey(form));
    // server values win: a form the server sent back (errors, a looked-up address) has them
    if (!raw || form.hasAttribute("data-server-values")) return;
    var data = JSON.parse(raw);
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name || SKIP[el.name] || !(el.name in data)) return;
      if (el.type === "checkbox" || el.type === "radio") el.checked = data[el.name].indexOf(el.value) >= 0;
      else if (el.type !== "file") el.value = data[el.name][0];
    });
  }
  function setupDrafts() {
    document.querySelectorAll("[data-clear-draft]").forEach(function (el) {
      sessionStorage.removeItem("draft:" + el.getAttribute("data-clear-draft"));
    });
    document.querySelectorAll("form[data-draft]").forEach(function (form) {
      restoreDraft(form);
      form.addEventListener("input", function () { saveDraft(form); });
      form.addEventListener("change", function () { saveDraft(form); });
      form.addEventListener("submit", function (event) {
        saveDraft(form);
        var button = event.submitter || form.querySelector("button[type=submit]");
        // the Idempotency-Key makes a second send harmless; this only avoids the wait
        if (button) setTimeout(function () { button.disabled = true; }, 0);
      });
    });
    document.querySelectorAll("form.signout").forEach(function (form) {
      form.addEventListener("submit", function () { sessionStorage.clear(); });
    });
  }

  // --- location from the phone --------------------------------------------------------------
  function setupLocation() {
    var button = document.getElementById("use-location");
    if (!button) return;
    var status = document.getElementById("location-status");
    if (!navigator.geolocation) { button.hidden = true; return; }
    button.addEventListener("click", function () {
      status.textContent = "Finding your location…";
      navigator.geolocation.getCurrentPosition(function (pos) {
        document.getElementById("f-location-lat").value = pos.coords.latitude.toFixed(5);
        document.getElementById("f-location-lon").value = pos.coords.longitude.toFixed(5);
        status.textContent = "Location added.";
        var form = button.closest("form"); if (form) saveDraft(form);
      }, function () {
        status.textContent = "Could not get the location. Type the coordinates instead.";
      }, { enableHighAccuracy: true, timeout: 10000 });
    });
  }

  // --- a place picked among several found for a typed address fills the coordinates --------
  function setupPlaces() {
    document.querySelectorAll("input[name='location.pick']").forEach(function (radio) {
      radio.addEventListener("change", function () {
        document.getElementById("f-location-lat").value = radio.getAttribute("data-lat");
        document.getElementById("f-location-lon").value = radio.getAttribute("data-lon");
        var status = document.getElementById("location-status");
        if (status) status.textContent = "Coordinates filled in from the place you chose.";
      });
    });
  }

  // --- live updates: the console's own event stream -----------------------------------------
  function setupLive() {
    var url = document.body.getAttribute("data-live");
    if (!url || !window.EventSource) return;
    var source = new EventSource(url);
    var announce = document.getElementById("live-status");
    source.addEventListener("live", function () {
      if (window.htmx) window.htmx.trigger(document.body, "live");
      if (announce) announce.textContent = "New update received.";
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupDrafts();
    setupLocation();
    setupPlaces();
    setupLive();
    tick();
    setInterval(tick, 1000);
  });
  document.addEventListener("htmx:afterSwap", tick);
})();
