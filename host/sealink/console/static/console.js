// Live updates: the server sends each verified update as a rendered table row (escaped by
// the server's templates); this script only puts it in place, with this page's CSRF token in
// its forms (a broadcast row is the same for every session).
(function () {
  "use strict";
  var live = document.getElementById("live");
  var main = document.querySelector("main");
  var csrf = main.dataset.csrf || "";
  // From the event this page was drawn at: nothing in between is lost. A reconnect sends
  // the last event id it got; a server that no longer holds what followed says "resync".
  var source = new EventSource("/stream?after=" + (main.dataset.after || "0"));
  source.onopen = function () { live.textContent = "● live"; live.className = "live on"; };
  source.addEventListener("resync", function () { window.location.reload(); });
  source.onerror = function () { live.textContent = "○ reconnecting"; live.className = "live"; };
  function row(html) {
    var holder = document.createElement("tbody");
    holder.innerHTML = html;
    var element = holder.firstElementChild;
    element.querySelectorAll("input[name=csrf]").forEach(function (f) { f.value = csrf; });
    return element;
  }
  function prepend(id, html) {
    var body = document.getElementById(id);
    if (body) { body.insertBefore(row(html), body.firstChild); }
  }
  function replace(id, html, append) {
    var body = document.getElementById(id);
    if (!body) { return; }
    var element = row(html);
    var old = document.getElementById(element.id);
    if (old) { old.replaceWith(element); }
    else if (append) { body.appendChild(element); }
    else { body.insertBefore(element, body.firstChild); }
  }
  source.addEventListener("impression", function (e) { prepend("impressions", e.data); });
  source.addEventListener("alarm", function (e) {
    prepend("alarms", e.data);
    if (e.data.indexOf("alarm quarantine") >= 0) { prepend("quarantine-alarms", e.data); }
  });
  source.addEventListener("held", function (e) {
    replace("held", e.data, true);
    document.querySelectorAll("#held tr.released").forEach(function (r) { r.remove(); });
  });
  source.addEventListener("health", function (e) { replace("devices", e.data, true); });
  source.addEventListener("request", function (e) { replace("requests", e.data, false); });
}());
