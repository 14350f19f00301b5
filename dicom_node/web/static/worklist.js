// Heatmap toggle on the study page; remembered for the session so self-refresh keeps it.
(function () {
  var box = document.getElementById("heatmap-toggle");
  if (!box) return;
  var key = "cxr-triage-heatmap";
  function apply() {
    document.querySelectorAll("img.heatmap").forEach(function (img) {
      img.style.display = box.checked ? "" : "none";
    });
  }
  try { if (sessionStorage.getItem(key) === "off") box.checked = false; } catch (e) {}
  box.addEventListener("change", function () {
    try { sessionStorage.setItem(key, box.checked ? "on" : "off"); } catch (e) {}
    apply();
  });
  apply();
})();
