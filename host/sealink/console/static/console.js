// Live updates: the server sends each verified update as a rendered table row (escaped by
// the server's templates); this script only puts it in place, with this page's CSRF token in
// its forms (a broadcast row is the same for every session).
(function () {
  "use strict";
  var live = document.getElementById("live");
  var csrf = document.querySelector("main").dataset.csrf || "";
  var source = new EventSource("/stream");
  var opened = false;
  source.onopen = function () {
    // Back after a break (the console restarted, the network dropped): what happened
    // meanwhile was never sent to this page, so it is drawn again from the server.
    if (opened) { window.location.reload(); return; }
    opened = true;
    live.textContent = "● live";
    live.className = "live on";
  };
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
