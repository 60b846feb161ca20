// Live updates: /events sends the page's <main> again every two seconds; without
// JavaScript (or EventSource) the page is the same, as of its loading.
(function () {
  var live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  var updates = 0;
  var source = new EventSource("/events");
  source.addEventListener("state", function (message) {
    live.innerHTML = message.data;
    updates += 1;
    live.setAttribute("data-updates", String(updates));
  });
})();
