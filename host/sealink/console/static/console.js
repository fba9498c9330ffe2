// Live updates: the server sends each verified update as a rendered table row (escaped by
// the server's templates); this script only puts it in place.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var csrf = document.querySelector("main").dataset.csrf || "";
  var source = new EventSource("/stream");
  source.onopen = function () { live.textContent = "● live"; live.className = "live on"; };
  source.onerror = function () { live.textContent = "○ reconnecting"; live.className = "live"; };
  function prepend(id, html) {
    var body = document.getElementById(id);
    if (body) { body.insertAdjacentHTML("afterbegin", html); }
    return body ? body.firstElementChild : null;
  }
  source.addEventListener("impression", function (e) { prepend("impressions", e.data); });
  source.addEventListener("alarm", function (e) {
    var row = prepend("alarms", e.data);
    var field = row && row.querySelector("input[name=csrf]");
    if (field) { field.value = csrf; }
  });
  source.addEventListener("health", function (e) {
    var body = document.getElementById("devices");
    if (!body) { return; }
    var holder = document.createElement("tbody");
    holder.innerHTML = e.data;
    var row = holder.firstElementChild;
    var old = document.getElementById(row.id);
    if (old) { old.replaceWith(row); } else { body.appendChild(row); }
  });
}());
